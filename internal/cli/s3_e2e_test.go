package cli_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

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

// kill -9 of a server in the middle of an eviction sweep on S3, again and
// again, leaves a bucket in which every manifest pulls whole, and the
// next server's sweeps finish the job: nothing stays that the bounds say
// must go. An unbounded server pushes through the rounds on the same
// bucket. KILN_KILL_SEED picks the moments; the seed is logged.
func TestCacheServeS3Kill9MidSweep(t *testing.T) {
	m := testenv.MinIO(t)
	bucket := m.Bucket(t)
	storage := "s3://" + bucket + "/ci"
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KILN_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("KILN_KILL_SEED=%q: %v", s, err)
		}
	}
	t.Logf("KILN_KILL_SEED=%d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	pusher := startServeEnv(t, m.Env(), "--storage", storage)
	bounded := []string{"--storage", storage, "--max-size", "1B", "--evict-grace", "1s", "--evict-interval", "100ms"}

	manifests := func() []string {
		var out []string
		root := "ci/docker/registry/v2/repositories/"
		for _, k := range m.Keys(t, bucket, root) {
			repo, rest, ok := strings.Cut(strings.TrimPrefix(k, root), "/_manifests/revisions/sha256/")
			if hex, ok2 := strings.CutSuffix(rest, "/link"); ok && ok2 {
				out = append(out, repo+"@sha256:"+hex)
			}
		}
		return out
	}
	pullsWhole := func(when string) {
		t.Helper()
		for _, ms := range manifests() {
			ref, _ := name.NewDigest(pusher.addr + "/" + ms)
			desc, err := remote.Get(ref)
			if err == nil {
				if desc.MediaType.IsIndex() {
					var idx v1.ImageIndex
					if idx, err = desc.ImageIndex(); err == nil {
						err = validate.Index(idx)
					}
				} else {
					var img v1.Image
					if img, err = desc.Image(); err == nil {
						err = validate.Image(img)
					}
				}
			}
			if err != nil {
				t.Errorf("%s: %s is in the bucket but does not pull whole: %v", when, ms, err)
			}
		}
	}

	for round := range 4 {
		for i := range 16 {
			ref, _ := name.ParseReference(fmt.Sprintf("%s/kill/r%d-%d:v1", pusher.addr, round, i))
			var err error
			if i%4 == 0 {
				idx, _ := random.Index(2000, 1, 2)
				err = remote.WriteIndex(ref, idx)
			} else {
				img, _ := random.Image(2000, 2)
				err = remote.Write(ref, img)
			}
			if err != nil {
				t.Fatalf("push %s: %v", ref, err)
			}
		}
		time.Sleep(1500 * time.Millisecond) // all older than the grace
		before := len(manifests())
		s := startServeEnv(t, m.Env(), bounded...)
		s.waitMsg(t, "evicted manifest")
		// Removing one image takes some milliseconds: a kill lands among
		// the manifests, among the blobs, or between sweeps.
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-s.done
		t.Logf("round %d: killed mid-sweep with %d of %d manifests left", round, len(manifests()), before)
		pullsWhole(fmt.Sprintf("after kill -9 in round %d", round))
	}

	s := startServeEnv(t, m.Env(), bounded...)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		left := m.Keys(t, bucket, "ci/docker/registry/v2/blobs/")
		if len(manifests()) == 0 && len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("60s after the kills, a server under --max-size 1B leaves %d manifests and %d blob objects:\n%s", len(manifests()), len(left), s.logs())
		}
	}
}
