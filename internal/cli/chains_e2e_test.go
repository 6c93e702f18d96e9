package cli_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// randomChain is the Dockerfile of issue #10 point 1: every step's result
// depends on its parent's bytes, and the first makes random ones, so two
// builds that ran concurrently produce different chains. A build whose
// /a, /b and /c differ stacked layers that were never built together. The
// sleeps (shortened from the 1-2 s) make builds overlap at random.
const randomChain = `FROM %s
RUN head -c 8 /dev/urandom | od -An -tx1 > /a; sleep 0.5
RUN sleep 0.$(head -c1 /dev/urandom | od -An -tu1 | awk '{print $1 %% 10}'); cat /a > /b
RUN cp /b /c
`

// cacheIndex returns the keys of the records in the registry cache at
// ref, read from its manifest's config blob (kiln's index, doc.go).
func cacheIndex(t *testing.T, ref string) []string {
	t.Helper()
	raw, err := testenv.Pull(t, ref).RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Records []struct {
			Key string `json:"key"`
		} `json:"records"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatalf("cache index at %s: %v", ref, err)
	}
	var keys []string
	for _, r := range idx.Records {
		keys = append(keys, r.Key)
	}
	return keys
}

// chainFiles reads /a, /b and /c of a type=local output and says whether
// they agree.
func chainFiles(t *testing.T, dir string) (a string, consistent bool, why string) {
	t.Helper()
	var got [3]string
	for i, f := range []string{"a", "b", "c"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return "", false, err.Error()
		}
		got[i] = string(b)
	}
	if got[0] == "" || got[0] != got[1] || got[1] != got[2] {
		return got[0], false, fmt.Sprintf("/a=%q /b=%q /c=%q", got[0], got[1], got[2])
	}
	return got[0], true, ""
}

// Concurrent builds on one local store and one --cache-to ref never stack
// layers that were not built together: every output is consistent, and so
// are a warm rebuild (all hits) and a fresh runner reading the registry
// cache the builds wrote together.
func TestConcurrentBuildsNeverMixChains(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf(randomChain, base)})
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	cacheRef := reg + "/cache/chains:c"
	outs := t.TempDir()

	const builds = 15
	var wg sync.WaitGroup
	results := make([]testenv.Result, builds)
	for i := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = testenv.Run(t, dir, env, "build", "--progress=plain",
				"-o", "type=local,dest="+filepath.Join(outs, fmt.Sprint(i)),
				"--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")
		}()
	}
	wg.Wait()
	inconsistent, failed := 0, 0
	distinct := map[string]bool{}
	for i, r := range results {
		if r.ExitCode != 0 {
			failed++
			t.Errorf("build %d failed:\n%s", i, r.Stderr)
			continue
		}
		a, ok, why := chainFiles(t, filepath.Join(outs, fmt.Sprint(i)))
		distinct[a] = true
		if !ok {
			inconsistent++
			t.Logf("build %d: %s", i, why)
		}
	}
	t.Logf("%d concurrent builds: %d inconsistent, %d failed, %d distinct /a", builds, inconsistent, failed, len(distinct))
	if inconsistent > 0 {
		t.Errorf("%d of %d concurrent builds stacked layers never built together", inconsistent, builds)
	}

	// Every build's records are in the shared ref: the first step's key is
	// common to all (same base, same instruction), the two after it are
	// unique to each build's chain.
	if n := len(cacheIndex(t, cacheRef)); n != 1+2*(builds-failed) {
		t.Errorf("the shared --cache-to ref holds %d records, want %d (1 shared + 2 per build)", n, 1+2*(builds-failed))
	}

	// Warm rebuild on the same store: every step a hit, still consistent.
	report := filepath.Join(t.TempDir(), "warm.json")
	warm := filepath.Join(outs, "warm")
	kiln(t, dir, env, "build", "--progress=plain", "-o", "type=local,dest="+warm, "--report", report, ".")
	if r := readReport(t, report); r.Totals.Cached != r.Totals.Steps || r.Totals.Steps != 3 {
		t.Errorf("warm rebuild: %d of %d steps cached, want 3 of 3", r.Totals.Cached, r.Totals.Steps)
	}
	if _, ok, why := chainFiles(t, warm); !ok {
		t.Errorf("warm rebuild on the shared store is inconsistent: %s", why)
	}

	// A fresh runner with only the registry cache.
	fresh := t.TempDir()
	freshEnv := []string{"HOME=" + fresh, "XDG_CACHE_HOME=" + filepath.Join(fresh, ".cache")}
	report = filepath.Join(t.TempDir(), "fresh.json")
	out := filepath.Join(outs, "fresh")
	kiln(t, dir, freshEnv, "build", "--progress=plain", "-o", "type=local,dest="+out, "--report", report,
		"--cache-from", "type=registry,ref="+cacheRef, ".")
	r := readReport(t, report)
	t.Logf("fresh runner: %d of %d steps cached", r.Totals.Cached, r.Totals.Steps)
	if r.Totals.Cached != r.Totals.Steps {
		t.Errorf("fresh runner: %d of %d steps cached from the shared --cache-to ref, want all", r.Totals.Cached, r.Totals.Steps)
	}
	if _, ok, why := chainFiles(t, out); !ok {
		t.Errorf("fresh runner from the registry cache is inconsistent: %s", why)
	}
}

// A rebuilt step that produces the same bytes as before is followed by
// hits: keys follow the parent's result, not its key (as BuildKit's
// content-based cache). The common case: a builder stage rebuilds after a
// source change that does not change its artifact; the final stage's COPY
// --from reruns, copies the same bytes, and every step after it is a hit.
func TestSameResultIsFollowedByHits(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	df := "FROM " + base + " AS build\nCOPY version.txt /v\nRUN cut -d. -f1 /v > /major\n" +
		"FROM " + base + "\nCOPY --from=build /major /major\nRUN cat /major > /out && date +%s%N >> /out\n"
	dir := writeContext(t, map[string]string{"Dockerfile": df, "version.txt": "1.0\n"})
	// SOURCE_DATE_EPOCH clamps file times, so equal files make equal
	// layer bytes.
	epoch := []string{"SOURCE_DATE_EPOCH=1700000000"}
	out1 := filepath.Join(t.TempDir(), "o")
	kiln(t, dir, epoch, "build", "--progress=plain", "-o", "type=local,dest="+out1, ".")

	// A minor version bump: the artifact (the major version) is the same.
	if err := os.WriteFile(filepath.Join(dir, "version.txt"), []byte("1.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(t.TempDir(), "r.json")
	out2 := filepath.Join(t.TempDir(), "o")
	kiln(t, dir, epoch, "build", "--progress=plain", "-o", "type=local,dest="+out2, "--report", report, ".")
	r := readReport(t, report)
	cached := map[string]bool{}
	for _, s := range r.Steps {
		cached[s.Name] = s.Cached
	}
	for _, rebuilt := range []string{"COPY version.txt /v", "RUN cut -d. -f1 /v > /major", "COPY --from=build /major /major"} {
		if c, ok := cached[rebuilt]; !ok || c {
			t.Errorf("%q: cached=%v, in report=%v; it depends on the changed file and must rebuild", rebuilt, c, ok)
		}
	}
	last := "RUN cat /major > /out && date +%s%N >> /out"
	if !cached[last] {
		t.Errorf("the step after a rebuilt step with identical bytes missed (steps: %v)", cached)
	}
	// A hit means the old /out, timestamp and all.
	if a, b := readFile(t, filepath.Join(out1, "out")), readFile(t, filepath.Join(out2, "out")); a != b {
		t.Errorf("/out is %q, then %q: the last step ran again", a, b)
	}
}

// Concurrent --cache-to flushes to one ref keep every build's records:
// 8 builds of 4 variants at once (each a fresh runner), then each variant
// on another fresh runner hits every step. SOURCE_DATE_EPOCH makes the
// shared steps' bytes equal in every build: without it, builds that run
// `RUN cat /common > /x` in different seconds make different layers, the
// shared step's key keeps one of them, and a variant built on another
// build's result misses from there on (consistent, but not reused).
func TestConcurrentCacheToKeepsEveryVariant(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	cacheRef := reg + "/cache/variants:c"
	df := "FROM " + base + "\nCOPY common.txt /common\nRUN cat /common > /x\nCOPY variant.txt /v\nRUN cat /v /x > /y\nRUN wc -c /y > /z\n"
	const variants, steps = 4, 5
	ctxs := make([]string, variants)
	for v := range ctxs {
		ctxs[v] = writeContext(t, map[string]string{"Dockerfile": df, "common.txt": "common\n", "variant.txt": fmt.Sprintf("variant %d\n", v)})
	}
	var wg sync.WaitGroup
	results := make([]testenv.Result, 2*variants)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir, env := freshRunner(t, ctxs[i%variants], time.Unix(1700000000, 0))
			env = append(env, "SOURCE_DATE_EPOCH=1700000000")
			results[i] = testenv.Run(t, dir, env, "build", "--progress=plain", "--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.ExitCode != 0 {
			t.Fatalf("build %d (variant %d) failed:\n%s", i, i%variants, r.Stderr)
		}
	}
	total := 0
	for v, src := range ctxs {
		dir, env := freshRunner(t, src, time.Unix(1710000000, 0))
		env = append(env, "SOURCE_DATE_EPOCH=1700000000")
		report := filepath.Join(t.TempDir(), "r.json")
		kiln(t, dir, env, "build", "--progress=plain", "--cache-from", "type=registry,ref="+cacheRef, "--report", report, ".")
		r := readReport(t, report)
		total += r.Totals.Cached
		if r.Totals.Steps != steps || r.Totals.Cached != steps {
			t.Errorf("variant %d: %d of %d steps cached from the shared ref, want %d of %d", v, r.Totals.Cached, r.Totals.Steps, steps, steps)
		}
	}
	t.Logf("fresh runners: %d of %d steps cached across %d variants", total, variants*steps, variants)
}
