package cli_test

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

const twoStageDockerfile = "FROM scratch AS build\nCOPY a.txt /a\nCOPY b.txt /b\nFROM scratch\nCOPY --from=build /a /final-a\nCOPY c.txt /c\n"

var twoStageFiles = map[string]string{"Dockerfile": twoStageDockerfile, "a.txt": "a", "b.txt": "b", "c.txt": "c"}

// A --cache-from that cannot be read is a warning; a --cache-to that
// cannot be written fails the build, unless ignore-error=true.
func TestCacheErrors(t *testing.T) {
	dir := writeContext(t, twoStageFiles)
	res := kiln(t, dir, nil, "build", "--progress=plain", "--cache-from", "type=registry,ref=127.0.0.1:1/nothing:here", "--cache-from", "type=local,src=/nonexistent/kiln", ".")
	if strings.Count(res.Stderr, "WARNING:") != 2 {
		t.Errorf("want a warning per unreadable --cache-from:\n%s", res.Stderr)
	}
	bad := testenv.Run(t, dir, nil, "build", "--progress=plain", "--cache-to", "type=registry,ref=127.0.0.1:1/nothing:here", ".")
	if bad.ExitCode == 0 || !strings.Contains(bad.Stderr, "--cache-to") {
		t.Errorf("an unwritable --cache-to must fail the build, naming it; exit %d:\n%s", bad.ExitCode, bad.Stderr)
	}
	ok := kiln(t, dir, nil, "build", "--progress=plain", "--cache-to", "type=registry,ref=127.0.0.1:1/nothing:here,ignore-error=true", ".")
	if !strings.Contains(ok.Stderr, "WARNING:") {
		t.Errorf("ignore-error=true must still warn:\n%s", ok.Stderr)
	}
	for _, spec := range []string{"type=s3,ref=x", "type=registry", "type=local", "type=registry,ref=x,mode=huge", "type=registry,ref=x,max-entries=-1", "type=registry,ref=x,frobnicate=1"} {
		if r := testenv.Run(t, dir, nil, "build", "--cache-to", spec, "."); r.ExitCode == 0 {
			t.Errorf("--cache-to %s: accepted", spec)
		}
	}
}

// Inline cache: an image kiln pushed serves as a cache for a fresh
// runner, as BUILDKIT_INLINE_CACHE=1 images do for BuildKit.
func TestInlineCache(t *testing.T) {
	reg := testenv.Registry(t)
	src := writeContext(t, twoStageFiles)
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	env = append(env, "SOURCE_DATE_EPOCH=1700000000")
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/inline:latest", ".")
	raw, err := testenv.Pull(t, reg+"/inline:latest").RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil || cfg["kiln.cache.v1"] == nil {
		t.Fatalf("pushed config carries no inline cache: %s", raw)
	}
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	report := filepath.Join(t.TempDir(), "r.json")
	// The final image's layers are inline; the build stage's are not (an
	// image carries only its own layers), so its two COPYs rerun. Keys
	// cover results, so COPY --from=build hits only if they made the same
	// bytes: the fresh checkout's new mtimes would change them, unless
	// SOURCE_DATE_EPOCH clamps them as a reproducible CI build does.
	env = append(env, "SOURCE_DATE_EPOCH=1700000000")
	kiln(t, dir, env, "build", "--progress=plain", "--cache-from", "type=registry,ref="+reg+"/inline:latest", "--report", report, ".")
	r := readReport(t, report)
	final := 0
	for _, s := range r.Steps {
		if s.Cached {
			final++
		}
	}
	if final != 2 {
		t.Errorf("%d steps cached from the inline cache, want the final image's 2:\n%+v", final, r.Steps)
	}
}

// --no-cache-filter skips lookups for the named stages only.
func TestNoCacheFilter(t *testing.T) {
	dir := writeContext(t, twoStageFiles)
	kiln(t, dir, nil, "build", "--progress=plain", ".")
	report := filepath.Join(t.TempDir(), "r.json")
	kiln(t, dir, nil, "build", "--progress=plain", "--no-cache-filter", "build", "--report", report, ".")
	r := readReport(t, report)
	for _, s := range r.Steps {
		inBuild := s.Name == "COPY a.txt /a" || s.Name == "COPY b.txt /b"
		if s.Cached == inBuild {
			t.Errorf("%s: cached=%v; only the build stage may skip the cache", s.Name, s.Cached)
		}
	}
	res := kiln(t, dir, nil, "build", "--progress=plain", "--no-cache", ".")
	if strings.Contains(res.Stderr, "CACHED") {
		t.Errorf("--no-cache still served steps from the cache:\n%s", res.Stderr)
	}
}

// mode=min exports only the final image's steps; max every stage's.
func TestCacheModeMinMax(t *testing.T) {
	reg := testenv.Registry(t)
	dir := writeContext(t, twoStageFiles)
	kiln(t, dir, nil, "build", "--progress=plain", "--cache-to", "type=registry,ref="+reg+"/c:min,mode=min", "--cache-to", "type=registry,ref="+reg+"/c:max", ".")
	count := func(tag string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+reg+"/v2/c/manifests/"+tag, nil)
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m struct{ Layers []any }
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatal(err)
		}
		return len(m.Layers)
	}
	if min, max := count("min"), count("max"); min != 2 || max != 4 {
		t.Errorf("cache blobs: mode=min %d (want the final image's 2), mode=max %d (want all 4)", min, max)
	}
}

// kiln cache ls shows what the local cache holds; prune trims it.
func TestCacheLsPrune(t *testing.T) {
	dir := writeContext(t, twoStageFiles)
	kiln(t, dir, nil, "build", "--progress=plain", ".")
	ls := kiln(t, dir, nil, "cache", "ls")
	if !strings.Contains(ls.Stdout, "COPY c.txt /c") || !strings.Contains(ls.Stdout, "total: 4 entries") {
		t.Errorf("cache ls:\n%s", ls.Stdout)
	}
	pr := kiln(t, dir, nil, "cache", "prune", "--max-size", "0B")
	if !strings.Contains(pr.Stdout, "removed") {
		t.Errorf("cache prune:\n%s", pr.Stdout)
	}
	pr = kiln(t, dir, nil, "cache", "prune", "--keep-duration", "1ns")
	if !strings.Contains(pr.Stdout, "removed ") {
		t.Errorf("prune --keep-duration 1ns must drop every entry:\n%s", pr.Stdout)
	}
	ls = kiln(t, dir, nil, "cache", "ls")
	if !strings.Contains(ls.Stdout, "total: 0 entries") {
		t.Errorf("after prune:\n%s", ls.Stdout)
	}
	if r := testenv.Run(t, dir, nil, "cache", "prune", "--max-size", "lots"); r.ExitCode == 0 {
		t.Error("--max-size lots accepted")
	}
}
