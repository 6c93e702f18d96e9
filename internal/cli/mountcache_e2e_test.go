package cli_test

import (
	"archive/tar"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// RUN --mount=type=cache contents survive from one runner to the next:
// exported with --cache-to, restored on a fresh runner when a step that
// mounts them misses.
func TestCacheMountSurvivesFreshRunner(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	cacheRef := reg + "/mounts:cache"
	df := "FROM " + base + "\nCOPY input.txt /input.txt\nRUN --mount=type=cache,id=gocache,target=/cache cat /input.txt >> /cache/log && cp /cache/log /log.txt\n"
	src := writeContext(t, map[string]string{"Dockerfile": df, "input.txt": "one\n"})

	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	res := kiln(t, dir, env, "build", "--progress=plain", "--cache-to", "type=registry,ref="+cacheRef, ".")
	if strings.Contains(res.Stderr, "restored cache mount") {
		t.Errorf("the first runner restored a cache mount from nowhere:\n%s", res.Stderr)
	}

	// A fresh runner whose input changed: the RUN misses, and finds the
	// first runner's cache mount contents.
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/mounts:2", "--cache-from", "type=registry,ref="+cacheRef, "--cache-to", "type=registry,ref="+cacheRef, ".")
	if !strings.Contains(res.Stderr, "restored cache mount gocache") {
		t.Errorf("no cache mount restored:\n%s", res.Stderr)
	}
	checkTree(t, testenv.Tree(t, testenv.Pull(t, reg+"/mounts:2")), map[string]want{
		"log.txt": {typ: tar.TypeReg, mode: 0o644, content: "one\ntwo\n"},
	})

	// A third runner with everything cached never touches the mount.
	dir, env = freshRunner(t, src, time.Unix(1720000000, 0))
	if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = kiln(t, dir, env, "build", "--progress=plain", "--cache-from", "type=registry,ref="+cacheRef, ".")
	if strings.Contains(res.Stderr, "restored cache mount") {
		t.Errorf("a fully cached build downloaded a cache mount:\n%s", res.Stderr)
	}
}

// TestReportCountsCacheMountUploads: the report's upload total is what
// went up, cache-mount packs and zstd copies of base layers included
// (they belong to no step, and were left out, so a build that pushed
// megabytes of mount reported kilobytes).
func TestReportCountsCacheMountUploads(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	p := newProxy(t, reg)
	base = strings.Replace(base, reg, p.host, 1)
	df := "FROM " + base + "\nRUN --mount=type=cache,id=big,target=/cache head -c 2097152 /dev/urandom > /cache/blob && echo done > /done\n"
	src := writeContext(t, map[string]string{"Dockerfile": df})
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	report := filepath.Join(t.TempDir(), "report.json")
	p.reset()
	kiln(t, dir, env, "build", "--progress=plain", "--report", report,
		"--cache-to", "type=registry,ref="+p.host+"/mounts/report:cache,mode=max", ".")
	r := readReport(t, report)
	p.mu.Lock()
	up := p.up
	p.mu.Unlock()
	// The proxy also saw the index and its config, a few KiB.
	if r.Totals.Uploaded > up || r.Totals.Uploaded < up-64<<10 || up < 2<<20 {
		t.Errorf("report says %d bytes uploaded; the registry received %d (the mount alone is 2 MiB of random bytes)", r.Totals.Uploaded, up)
	}
}
