package cli_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/testenv"
)

// Two builds with nothing in common but the base: A's first step leaves
// 3 MB of random bytes, so dropping it shows on disk.
func localBoundsContexts(t *testing.T, base string) (a, b string) {
	return writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\n" +
			"RUN head -c 3000000 /dev/urandom > /a1\nRUN echo a2 > /a2\nRUN echo a3 > /a3\n"}),
		writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo b1 > /b1\nRUN echo b2 > /b2\n"})
}

// localRecords reads every record file in a local cache directory and
// fails the test when one names a blob that is missing or of the wrong
// size: the cache a reader would find inconsistent.
func localRecords(t *testing.T, dir string) int {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "records", "sha256", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		var r struct {
			Layer *struct {
				Digest string `json:"digest"`
				Size   int64  `json:"size"`
			} `json:"layer"`
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if r.Layer == nil || r.Layer.Digest == "" {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(r.Layer.Digest, "sha256:")))
		if err != nil || fi.Size() != r.Layer.Size {
			t.Errorf("record %s names blob %s, which is missing or truncated (%v)", filepath.Base(p), r.Layer.Digest, err)
		}
	}
	return len(paths)
}

// cachedOn builds src on a fresh runner from the local cache at dir and
// returns how many of its steps were cached, of how many.
func cachedOn(t *testing.T, src, dir string) (cached, steps int) {
	t.Helper()
	run, env := freshRunner(t, src, time.Unix(1720000000, 0))
	report := filepath.Join(t.TempDir(), "report.json")
	kiln(t, run, env, "build", "--progress=plain", "--cache-from", "type=local,src="+dir, "--report", report, ".")
	r := readReport(t, report)
	return r.Totals.Cached, r.Totals.Steps
}

// max-entries=N on a local cache keeps at most N records, the newest: B's,
// exported last, are all there and a fresh runner hits every one of B's
// steps; A's are gone with their blobs, and a fresh runner building A
// misses them and builds, with no error about the cache.
func TestLocalCacheMaxEntries(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	a, b := localBoundsContexts(t, base)

	// How many records B alone makes (its steps and what they carry).
	alone := filepath.Join(t.TempDir(), "alone")
	run, env := freshRunner(t, b, time.Unix(1700000000, 0))
	kiln(t, run, env, "build", "--progress=plain", "--cache-to", "type=local,dest="+alone, ".")
	n := localRecords(t, alone)

	dir := filepath.Join(t.TempDir(), "cache")
	run, env = freshRunner(t, a, time.Unix(1700000000, 0))
	kiln(t, run, env, "build", "--progress=plain", "--cache-to", "type=local,dest="+dir, ".")
	withA := duBytes(t, dir)
	// Nobody used A's blobs for an hour, so B's Flush may take them (a
	// blob lingers that long after its last use, for a build still
	// reading a layer it hit).
	ageBlobs(t, dir, time.Now().Add(-2*time.Hour))
	if got := localRecords(t, dir); got <= n {
		t.Fatalf("A made %d records, B %d: the bound would not drop any of A's", got, n)
	}
	run, env = freshRunner(t, b, time.Unix(1710000000, 0))
	kiln(t, run, env, "build", "--progress=plain", "--cache-to", fmt.Sprintf("type=local,dest=%s,max-entries=%d", dir, n), ".")
	if got := localRecords(t, dir); got != n {
		t.Errorf("%d records after an export with max-entries=%d", got, n)
	}
	if after := duBytes(t, dir); after >= withA {
		t.Errorf("the cache holds %d bytes after dropping A's 3 MB step, %d before", after, withA)
	}
	if cached, steps := cachedOn(t, b, dir); cached != steps {
		t.Errorf("B on a fresh runner: %d of %d steps cached, want all", cached, steps)
	}
	if cached, steps := cachedOn(t, a, dir); cached != 0 {
		t.Errorf("A on a fresh runner: %d of %d steps cached, want none (their records were dropped)", cached, steps)
	}
	localRecords(t, dir)
}

// max-age on a local cache drops records unused for longer, and their
// blobs: the directory shrinks by A's 3 MB although B was added.
func TestLocalCacheMaxAge(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	a, b := localBoundsContexts(t, base)
	dir := filepath.Join(t.TempDir(), "cache")
	run, env := freshRunner(t, a, time.Unix(1700000000, 0))
	kiln(t, run, env, "build", "--progress=plain", "--cache-to", "type=local,dest="+dir, ".")
	// A was last used a month ago (a record's last use is its mtime).
	month := time.Now().Add(-30 * 24 * time.Hour)
	// Its blobs too: a blob no record names lingers for an hour after its
	// last use, for a build that hit it and reads it later.
	ageBlobs(t, dir, month)
	paths, _ := filepath.Glob(filepath.Join(dir, "records", "sha256", "*.json"))
	for _, p := range paths {
		if err := os.Chtimes(p, month, month); err != nil {
			t.Fatal(err)
		}
	}
	before := duBytes(t, dir)
	run, env = freshRunner(t, b, time.Unix(1710000000, 0))
	kiln(t, run, env, "build", "--progress=plain", "--cache-to", "type=local,dest="+dir+",max-age=7d", ".")
	if after := duBytes(t, dir); after >= before-2_000_000 {
		t.Errorf("du of the cache went from %d to %d bytes; dropping A's records must free its 3 MB blob", before, after)
	}
	localRecords(t, dir)
	if cached, steps := cachedOn(t, b, dir); cached != steps {
		t.Errorf("B on a fresh runner: %d of %d steps cached, want all", cached, steps)
	}
	if cached, steps := cachedOn(t, a, dir); cached != 0 {
		t.Errorf("A on a fresh runner: %d of %d steps cached, want none", cached, steps)
	}
}

// Builds exporting to one local directory at once, one of them evicting
// with max-entries=1 each time, leave a consistent cache: every record's
// blob is there whole, and a fresh runner's build from it succeeds.
func TestLocalCacheEvictionUnderConcurrentWriter(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	a, b := localBoundsContexts(t, base)
	dir := filepath.Join(t.TempDir(), "cache")
	for round := range 3 {
		var wg sync.WaitGroup
		for i, spec := range []struct{ src, to string }{
			{a, "type=local,dest=" + dir},
			{b, "type=local,dest=" + dir + ",max-entries=1"},
		} {
			wg.Go(func() {
				// A new mtime each round changes no key; a new build
				// arg would, so A's records are put again each time.
				run, env := freshRunner(t, spec.src, time.Unix(1700000000+int64(round*10+i), 0))
				res := testenv.Run(t, run, env, "build", "--progress=plain", "--no-cache", "--cache-to", spec.to, ".")
				if res.ExitCode != 0 {
					t.Errorf("round %d, build %d: exit %d\n%s", round, i, res.ExitCode, res.Stderr)
				}
			})
		}
		wg.Wait()
		localRecords(t, dir)
	}
	cachedOn(t, a, dir)
	cachedOn(t, b, dir)
	localRecords(t, dir)
}

// max-entries on a local cache counts a mount's manifest and its packs as
// the registry does (TestCacheBoundsKeepAMountWhole): with room for the
// unit a fresh runner restores the mount exactly, without it gets no
// mount at all, never part of one, and the packs' blobs are gone.
func TestLocalCacheBoundsKeepAMountWhole(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "one\n"})
	for _, tc := range []struct {
		entries string
		whole   bool
	}{{"4", true}, {"2", false}} {
		t.Run("max-entries="+tc.entries, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "cache")
			img := reg + "/lb/mount" + tc.entries
			run, env := freshRunner(t, src, time.Unix(1700000000, 0))
			kiln(t, run, env, "build", "--progress=plain", "--cache-to", "type=local,dest="+dir, ".")

			run, env = freshRunner(t, src, time.Unix(1710000000, 0))
			if err := os.WriteFile(filepath.Join(run, "input.txt"), []byte("two\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			kiln(t, run, env, "build", "--progress=plain", "--push", "-t", img+":2", "--cache-from", "type=local,src="+dir,
				"--cache-to", "type=local,dest="+dir+",max-entries="+tc.entries, ".")
			saved := outFile(t, img+":2", "after")
			if n := localRecords(t, dir); n > 4 {
				t.Errorf("%d records under max-entries=%s", n, tc.entries)
			}
			packs, _ := filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
			if !tc.whole {
				// This build hit the mount's packs, so its own Flush left
				// their bytes for the grace; the next Flush after it
				// reclaims them.
				ageBlobs(t, dir, time.Now().Add(-2*time.Hour))
				l, err := cache.OpenLocal(dir)
				if err != nil {
					t.Fatal(err)
				}
				l.SetBounds(cache.Bounds{MaxEntries: 2})
				if err := l.Flush(context.Background()); err != nil {
					t.Fatal(err)
				}
				packs, _ = filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
			}
			bytes := duBytes(t, dir)
			if !tc.whole && bytes > 1_000_000 {
				t.Errorf("the cache still holds %d bytes (%d blobs) with the mount's 3 MB unit dropped", bytes, len(packs))
			}

			run, env = freshRunner(t, src, time.Unix(1720000000, 0))
			if err := os.WriteFile(filepath.Join(run, "input.txt"), []byte("three\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			res := kiln(t, run, env, "build", "--progress=plain", "--push", "-t", img+":3", "--cache-from", "type=local,src="+dir, ".")
			if strings.Contains(res.Stderr, "left out") || strings.Contains(res.Stderr, "packs are gone") {
				t.Errorf("the restore after a bounded save was partial:\n%s", res.Stderr)
			}
			if restored := strings.Contains(res.Stderr, "restored cache mount tree"); restored != tc.whole {
				t.Errorf("restored = %v, want %v:\n%s", restored, tc.whole, res.Stderr)
			}
			if tc.whole {
				if got := outFile(t, img+":3", "before"); got != saved {
					t.Errorf("the restored mount is not the saved one\n got:\n%s\nwant:\n%s", got, saved)
				}
			} else if hasOut(t, img+":3", "before") {
				t.Errorf("a mount whose unit did not fit the bound was restored")
			}
		})
	}
}

// Bounds on kiln's own cache directory as a --cache-to would wait for a
// lock the build itself holds: the export fails at once, saying why,
// instead of hanging the build.
func TestLocalCacheBoundsOnKilnsOwnCacheFail(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	_, b := localBoundsContexts(t, base)
	run, env := freshRunner(t, b, time.Unix(1700000000, 0))
	own := filepath.Join(strings.TrimPrefix(env[1], "XDG_CACHE_HOME="), "kiln", "cache")
	start := time.Now()
	res := testenv.Run(t, run, env, "build", "--progress=plain", "--cache-to", "type=local,dest="+own+",max-entries=1", ".")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "kiln's own cache") {
		t.Errorf("exit %d, want a failure naming kiln's own cache:\n%s", res.ExitCode, res.Stderr)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("took %v", d)
	}
}

// ageBlobs sets the last use (mtime) of every blob in the local cache dir.
func ageBlobs(t *testing.T, dir string, at time.Time) {
	t.Helper()
	blobs, _ := filepath.Glob(filepath.Join(dir, "blobs", "sha256", "*"))
	for _, p := range blobs {
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
}
