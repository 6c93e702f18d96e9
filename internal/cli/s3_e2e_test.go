package cli_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// Scale-out on one bucket: runner 1 pushes its image and a mode=max cache
// through server A, and a brand-new runner 2 pointed at server B, which
// shares A's bucket (a real MinIO), finds every step cached there,
// downloads no layer and pushes the same image.
func TestCacheServeS3TwoServersFreshRunner(t *testing.T) {
	testenv.Need(t, "runc")
	m := testenv.MinIO(t)
	storage := "s3://" + m.Bucket(t) + "/ci"
	a := startServeEnv(t, m.Env(), "--storage", storage)
	b := startServeEnv(t, m.Env(), "--storage", storage)
	base, _ := testenv.BusyboxImage(t, a.addr, "busybox")
	src := writeContext(t, cacheFiles)

	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", a.addr+"/app:1", "--build-arg", "BASE="+base,
		"--cache-to", "type=registry,ref="+a.addr+"/cache/app:buildcache,mode=max", ".")
	firstDigest, _ := testenv.Pull(t, a.addr+"/app:1").Digest()

	p := newProxy(t, b.addr)
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	report := filepath.Join(t.TempDir(), "report.json")
	res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", p.host+"/app:2",
		"--build-arg", "BASE="+strings.Replace(base, a.addr, p.host, 1),
		"--cache-from", "type=registry,ref="+p.host+"/cache/app:buildcache", "--report", report, ".")
	second := testenv.Pull(t, a.addr+"/app:2") // pushed through B, read through A
	secondDigest, _ := second.Digest()
	if firstDigest != secondDigest {
		t.Errorf("image digest changed on a fully cached build through the other server: %s then %s", firstDigest, secondDigest)
	}
	r := readReport(t, report)
	if r.Totals.Steps != 8 || r.Totals.Cached != 8 {
		t.Errorf("%d of %d steps cached through server B, want all 8:\n%s", r.Totals.Cached, r.Totals.Steps, res.Stderr)
	}
	if n, bytes := p.downloaded(layerDigests(t, second)); n != 0 {
		t.Errorf("a fully cached build downloaded %d layer blobs (%d bytes) from server B", n, bytes)
	}
	if !strings.Contains(b.logs(), `"path":"/v2/cache/app/manifests/buildcache"`) {
		t.Errorf("server B's access log has no read of the cache manifest A stored")
	}
}

// A bad --storage fails at start-up with the reason, before listening.
func TestCacheServeS3BadStorage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"--storage", "s3://Bad_Bucket/p"}, []string{"AWS_ENDPOINT_URL=http://127.0.0.1:1"}, "not a bucket name"},
		{[]string{"--storage", "file:///var/cache"}, nil, "want s3://BUCKET"},
		{[]string{"--storage", "s3://cache/p", "--root", "/tmp/x"}, nil, "none of the others can be"},
		{[]string{"--storage", "s3://cache/p"}, []string{"AWS_ENDPOINT_URL=http://127.0.0.1:1", "AWS_ACCESS_KEY_ID=x", "AWS_SECRET_ACCESS_KEY=y"}, "unreachable"},
		{nil, nil, "at least one of the flags in the group [root storage] is required"},
	} {
		res := testenv.Run(t, t.TempDir(), append(tc.env, "AWS_EC2_METADATA_DISABLED=true"), append([]string{"cache", "serve", "--addr", "127.0.0.1:0"}, tc.args...)...)
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, tc.want) || strings.Contains(res.Stderr, `"msg":"listening"`) {
			t.Errorf("kiln cache serve %v: exit %d, stderr:\n%s\nwant a failure saying %q", tc.args, res.ExitCode, res.Stderr, tc.want)
		}
	}
}
