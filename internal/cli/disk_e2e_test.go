package cli_test

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// bigFileSize is the size of the incompressible file in the growth test:
// big enough that a second copy of it stands out, small enough for a
// loaded CI machine. KILN_DISK_TEST_MB=500 measures the case.
func bigFileSize(t *testing.T) int {
	if v := os.Getenv("KILN_DISK_TEST_MB"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("KILN_DISK_TEST_MB=%s: %v", v, err)
		}
		return n << 20
	}
	return 128 << 20
}

// kilnRoot is kiln's directory for the test's home.
func kilnRoot(t *testing.T) string {
	return filepath.Join(testenv.Home(t), ".cache", "kiln")
}

// duBytes is what `du -s` says dir holds, in bytes (allocated blocks,
// each hard-linked file once), as a user checking kiln's disk use sees it.
func duBytes(t *testing.T, dir string) int64 {
	t.Helper()
	out, err := exec.Command("du", "-s", "--block-size=1", dir).Output()
	if err != nil {
		t.Fatalf("du %s: %v", dir, err)
	}
	n, err := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	if err != nil {
		t.Fatalf("du %s: %q", dir, out)
	}
	return n
}

// duPerDir reports du of each directory directly under kiln's root, for
// the log: where the bytes are.
func duPerDir(t *testing.T, root string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", "du -s --block-size=1M \"$1\"/* 2>/dev/null | sed \"s|$1/||\"", "sh", root).Output()
	if err != nil {
		return err.Error()
	}
	return strings.Join(strings.Fields(string(out)), " ")
}

// duReport is `kiln cache du --format=json`.
type duReport struct {
	Total int64            `json:"total"`
	Kinds map[string]int64 `json:"kinds"`
}

func cacheDu(t *testing.T, dir string) duReport {
	t.Helper()
	res := kiln(t, dir, nil, "cache", "du", "--format=json")
	var r duReport
	if err := json.Unmarshal([]byte(res.Stdout), &r); err != nil {
		t.Fatalf("kiln cache du --format=json: %v\n%s", err, res.Stdout)
	}
	return r
}

// lsTotal parses the total size `kiln cache ls` ends with.
func lsTotal(t *testing.T, dir string) int64 {
	t.Helper()
	res := kiln(t, dir, nil, "cache", "ls")
	lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
	last := lines[len(lines)-1]
	_, rest, ok := strings.Cut(last, "entries, ")
	if !ok {
		t.Fatalf("kiln cache ls: no total line:\n%s", res.Stdout)
	}
	return parseHuman(t, strings.Fields(rest)[0])
}

func parseHuman(t *testing.T, s string) int64 {
	t.Helper()
	s = strings.TrimSuffix(s, ",")
	for _, u := range []struct {
		suffix string
		mult   float64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(num, 64)
			if err != nil {
				t.Fatalf("size %q: %v", s, err)
			}
			return int64(f * u.mult)
		}
	}
	t.Fatalf("size %q: no unit", s)
	return 0
}

func randomFile(t *testing.T, path string, size int) {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// bigContext is the case: one big incompressible file and a small
// one, copied whole, then a small RUN.
func bigContext(t *testing.T, base string, size int) string {
	t.Helper()
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nCOPY . /x/\nRUN echo built > /built.txt\n",
		"small.txt":  "v1\n",
	})
	randomFile(t, filepath.Join(dir, "big.bin"), size)
	return dir
}

const mib = 1 << 20

// Rebuilding after a one-file change adds the new layer once: not a
// second copy in the image store, nor a third as an extracted snapshot
// kept beside the layer it replaced.
func TestRebuildGrowthIsOneLayer(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	bigFile := bigFileSize(t)
	dir := bigContext(t, base, bigFile)
	root := kilnRoot(t)

	kiln(t, dir, nil, "build", "--progress=quiet", ".")
	before := duBytes(t, root)
	t.Logf("after build 1: %d MiB (cache ls: %d MiB): %s", before/mib, lsTotal(t, dir)/mib, duPerDir(t, root))
	for i := 2; i <= 3; i++ {
		if err := os.WriteFile(filepath.Join(dir, "small.txt"), []byte(fmt.Sprintf("v%d\n", i)), 0o644); err != nil {
			t.Fatal(err)
		}
		kiln(t, dir, nil, "build", "--progress=quiet", ".")
		after := duBytes(t, root)
		t.Logf("after build %d: %d MiB (+%d MiB; cache ls: %d MiB): %s", i, after/mib, (after-before)/mib, lsTotal(t, dir)/mib, duPerDir(t, root))
		// The new COPY layer is the big file (incompressible) plus a few
		// KiB of tar headers and the small file.
		limit := int64(bigFile)*11/10 + 5*mib
		if grew := after - before; grew > limit {
			t.Errorf("build %d added %d MiB to kiln's directory, want at most %d MiB (one %d MiB layer + overhead)",
				i, grew/mib, limit/mib, bigFile/mib)
		}
		before = after
	}
}

// `kiln cache ls` and `kiln cache du` report what kiln's directory really
// holds, within 5% of du -s, with every kind of thing kiln keeps present:
// records and blobs, local images, extracted layers and cache mounts.
func TestCacheLsMatchesDu(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nCOPY . /x/\n" +
			"RUN --mount=type=cache,id=dl,target=/cache head -c 20000000 /dev/urandom > /cache/blob && echo ok > /ok\n" +
			"RUN head -c 10000000 /dev/urandom > /r.bin\n",
	})
	randomFile(t, filepath.Join(dir, "big.bin"), 30*mib)
	kiln(t, dir, nil, "build", "--progress=quiet", "-t", "disk/ls:1", ".")
	randomFile(t, filepath.Join(dir, "big.bin"), 30*mib)
	kiln(t, dir, nil, "build", "--progress=quiet", "-t", "disk/ls:2", ".")

	root := kilnRoot(t)
	real := duBytes(t, root)
	t.Logf("du -s: %d MiB: %s", real/mib, duPerDir(t, root))
	within := func(what string, got int64) {
		t.Helper()
		if diff := got - real; diff > real/20 || -diff > real/20 {
			t.Errorf("%s reports %.1f MiB, du -s says %.1f MiB (more than 5%% apart)", what, float64(got)/mib, float64(real)/mib)
		}
	}
	within("kiln cache ls", lsTotal(t, dir))
	du := cacheDu(t, dir)
	within("kiln cache du", du.Total)
	t.Logf("kiln cache du: %+v", du)
	for _, k := range []string{"cache", "images", "snapshots", "mounts"} {
		if du.Kinds[k] <= 0 {
			t.Errorf("kiln cache du: no %s counted: %+v", k, du.Kinds)
		}
	}
}

// After `kiln cache prune --all` kiln's directory holds next to nothing:
// every kind of stored thing is reachable by prune.
func TestPruneReachesEverything(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nCOPY . /x/\n" +
			"RUN --mount=type=cache,id=dl,target=/cache head -c 5000000 /dev/urandom > /cache/blob && echo ok > /ok\n",
	})
	randomFile(t, filepath.Join(dir, "big.bin"), 20*mib)
	kiln(t, dir, nil, "build", "--progress=quiet", "-t", "disk/prune:1", ".")
	root := kilnRoot(t)
	t.Logf("before prune: %d MiB: %s", duBytes(t, root)/mib, duPerDir(t, root))

	// By age: everything was used just now, so nothing goes.
	full := duBytes(t, root)
	kiln(t, dir, nil, "cache", "prune", "--filter", "until=24h")
	if got := duBytes(t, root); got < full*9/10 {
		t.Errorf("prune --filter until=24h removed recently used things: %d MiB of %d MiB left", got/mib, full/mib)
	}
	// By size: least recently used first, until it fits.
	kiln(t, dir, nil, "cache", "prune", "--keep-storage", "10MiB")
	if got := duBytes(t, root); got > 10*mib {
		t.Errorf("prune --keep-storage 10MiB left %.1f MiB", float64(got)/mib)
	}

	res := kiln(t, dir, nil, "cache", "prune", "--all")
	t.Logf("prune: %s", res.Stdout)
	left := duBytes(t, root)
	t.Logf("after prune --all: %d KiB: %s", left>>10, duPerDir(t, root))
	if left > 1*mib {
		out, _ := exec.Command("find", root, "-size", "+4k").Output()
		t.Errorf("after prune --all kiln's directory holds %d KiB, want only locks and markers; big files:\n%s", left>>10, out)
	}
	// The cache still works afterwards.
	kiln(t, dir, nil, "build", "--progress=quiet", ".")
}

// An automatic bound holds kiln's directory under --max-cache-size after
// every build, least recently used first, and never takes what a running
// build uses.
func TestAutoBound(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	root := kilnRoot(t)
	const limit = 40 * mib

	// A long build holds its layers while others trim the cache.
	slow := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nCOPY . /x/\nRUN sleep 6 && cat /x/big.bin > /copy.bin\nRUN cmp /x/big.bin /copy.bin && rm /copy.bin\n",
	})
	randomFile(t, filepath.Join(slow, "big.bin"), 4*mib)
	var wg sync.WaitGroup
	var slowRes testenv.Result
	wg.Add(1)
	go func() {
		defer wg.Done()
		slowRes = testenv.Run(t, slow, nil, "build", "--progress=plain", "--max-cache-size=40MiB", "-o", "type=local,dest="+filepath.Join(t.TempDir(), "out"), ".")
	}()
	time.Sleep(2 * time.Second)

	dir := bigContext(t, base, 12*mib)
	for i := 1; i <= 5; i++ {
		randomFile(t, filepath.Join(dir, "big.bin"), 12*mib)
		kiln(t, dir, nil, "build", "--progress=quiet", "--max-cache-size=40MiB", ".")
		got := duBytes(t, root)
		t.Logf("after build %d: %.1f MiB: %s", i, float64(got)/mib, duPerDir(t, root))
		if got > limit {
			t.Errorf("after build %d kiln's directory holds %.1f MiB, over --max-cache-size=40MiB", i, float64(got)/mib)
		}
	}
	wg.Wait()
	if slowRes.ExitCode != 0 {
		t.Errorf("the concurrent build failed while others trimmed the cache: exit %d\n%s", slowRes.ExitCode, slowRes.Stderr)
	}

	// The environment variable sets the same bound.
	randomFile(t, filepath.Join(dir, "big.bin"), 12*mib)
	kiln(t, dir, []string{"KILN_MAX_CACHE_SIZE=20MiB"}, "build", "--progress=quiet", ".")
	if got := duBytes(t, root); got > 20*mib {
		t.Errorf("KILN_MAX_CACHE_SIZE=20MiB: kiln's directory holds %.1f MiB", float64(got)/mib)
	}
}
