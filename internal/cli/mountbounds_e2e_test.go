package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// packRecordFiles is the record files of cache-mount packs in a local
// cache directory.
func packRecordFiles(t *testing.T, dir string) []string {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(dir, "records", "sha256", "*.json"))
	var out []string
	for _, p := range paths {
		var r struct {
			StepID string `json:"stepID"`
		}
		if err := json.Unmarshal([]byte(readFile(t, p)), &r); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(r.StepID, "cache-mount-pack|") {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no pack records in %s", dir)
	}
	return out
}

// hasOut reports whether ref's image has /out/name.
func hasOut(t *testing.T, ref, name string) bool {
	t.Helper()
	_, ok := testenv.Tree(t, testenv.Pull(t, ref))["out/"+name]
	return ok
}

// max-entries on a registry cache keeps a mount's manifest with every pack
// it names or drops it whole. The second build reuses the first's big
// pack without re-putting it (it was used within the hour), so by its own
// last use the pack is the oldest record: a bound by records alone kept
// the new manifest and dropped the pack the mount's files are in. With
// room for the unit, a fresh runner restores the mount exactly; without,
// it gets no mount at all, never a part of one.
func TestCacheBoundsKeepAMountWhole(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "one\n"})
	for _, tc := range []struct {
		entries string
		whole   bool
	}{{"4", true}, {"2", false}} {
		t.Run("max-entries="+tc.entries, func(t *testing.T) {
			cacheRef := reg + "/ms/bound" + tc.entries + ":cache"
			from := "type=registry,ref=" + cacheRef
			to := from + ",max-entries=" + tc.entries
			dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
			kiln(t, dir, env, "build", "--progress=plain", "--cache-to", from, ".")

			dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
			if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/bound"+tc.entries+":2", "--cache-from", from, "--cache-to", to, ".")
			saved := outFile(t, reg+"/ms/bound"+tc.entries+":2", "after")

			dir, env = freshRunner(t, src, time.Unix(1720000000, 0))
			if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("three\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/bound"+tc.entries+":3", "--cache-from", from, ".")
			if strings.Contains(res.Stderr, "left out") {
				t.Errorf("the restore after a bounded save was partial:\n%s", res.Stderr)
			}
			restored := strings.Contains(res.Stderr, "restored cache mount tree")
			if restored != tc.whole {
				t.Errorf("restored = %v, want %v:\n%s", restored, tc.whole, res.Stderr)
			}
			if tc.whole {
				if got := outFile(t, reg+"/ms/bound"+tc.entries+":3", "before"); got != saved {
					t.Errorf("the restored mount is not the saved one\n got:\n%s\nwant:\n%s", got, saved)
				}
			} else if hasOut(t, reg+"/ms/bound"+tc.entries+":3", "before") {
				t.Errorf("a mount whose unit did not fit the bound was restored")
			}
		})
	}
}

// A local cache restore refreshes the last use of the packs it read, so
// the size bound does not take packs a live manifest just used; and a
// manifest whose packs a collection (or an older kiln) evicted restores
// nothing, with a warning, never a part of the mount.
func TestLocalMountRestoreRefreshesAndRefusesPartial(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "one\n"})
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/lru:1", "--cache-to", "type=local,dest="+cacheDir, ".")
	saved := outFile(t, reg+"/ms/lru:1", "after")

	month := time.Now().Add(-30 * 24 * time.Hour)
	packs := packRecordFiles(t, cacheDir)
	for _, p := range packs {
		if err := os.Chtimes(p, month, month); err != nil {
			t.Fatal(err)
		}
	}
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/lru:2", "--cache-from", "type=local,src="+cacheDir, ".")
	if got := outFile(t, reg+"/ms/lru:2", "before"); got != saved {
		t.Errorf("restored tree differs from the saved one\n got:\n%s\nwant:\n%s", got, saved)
	}
	for _, p := range packs {
		if fi, err := os.Stat(p); err != nil || time.Since(fi.ModTime()) > time.Hour {
			t.Errorf("pack record %s not refreshed by the restore (%v)", filepath.Base(p), err)
		}
	}

	if err := os.Remove(packs[0]); err != nil {
		t.Fatal(err)
	}
	dir, env = freshRunner(t, src, time.Unix(1720000000, 0))
	if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("three\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/lru:3", "--cache-from", "type=local,src="+cacheDir, ".")
	if !strings.Contains(res.Stderr, "packs are gone") || !strings.Contains(res.Stderr, "starting empty") {
		t.Errorf("no warning that the mount's packs are gone:\n%s", res.Stderr)
	}
	if hasOut(t, reg+"/ms/lru:3", "before") {
		t.Errorf("a mount missing a pack was restored in part:\n%s", outFile(t, reg+"/ms/lru:3", "before"))
	}
}

// The plain progress ends with one line per cache mount, after the
// summary line and nowhere else: where it was restored from and what that
// fetched, where it was saved and what that uploaded.
func TestPlainSummaryHasOneLinePerMount(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	cacheRef := reg + "/ms/sum:cache"
	df := "FROM " + base + "\nCOPY input.txt /input.txt\n" +
		"RUN --mount=type=cache,id=one,target=/a --mount=type=cache,id=two,target=/b cat /input.txt >> /a/log && head -c 100000 /dev/urandom > /b/r$(cat /input.txt)\n"
	src := writeContext(t, map[string]string{"Dockerfile": df, "input.txt": "1\n"})
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	res := kiln(t, dir, env, "build", "--progress=plain", "--cache-to", "type=registry,ref="+cacheRef, ".")
	checkMountLines(t, res.Stderr, map[string][]string{
		"one": {"saved cache mount one to registry:" + cacheRef + ": 1 files, ", "1 new files packed", "uploaded in "},
		"two": {"saved cache mount two to registry:" + cacheRef + ": 1 files, 97.7 KiB; 1 new files packed"},
	})

	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = kiln(t, dir, env, "build", "--progress=plain", "--cache-from", "type=registry,ref="+cacheRef, "--cache-to", "type=registry,ref="+cacheRef, ".")
	checkMountLines(t, res.Stderr, map[string][]string{
		"one": {"restored cache mount one from registry:" + cacheRef + ": 1 files, 2 B (", " fetched) in ", "; saved to registry:" + cacheRef + ": 1 files, 4 B; 1 new files packed"},
		"two": {"restored cache mount two from registry:" + cacheRef + ": 1 files, 97.7 KiB (", "; saved to registry:" + cacheRef + ": 2 files, 195.3 KiB; 1 new files packed"},
	})
}

// checkMountLines checks that each mount's id appears in exactly one
// line, after the "summary:" line, holding every want.
func checkMountLines(t *testing.T, out string, wants map[string][]string) {
	t.Helper()
	lines := strings.Split(out, "\n")
	sum := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "summary: ") {
			sum = i
		}
	}
	if sum < 0 {
		t.Fatalf("no summary line:\n%s", out)
	}
	for id, want := range wants {
		var found []int
		for i, l := range lines {
			if strings.Contains(l, "cache mount "+id+" ") {
				found = append(found, i)
			}
		}
		if len(found) != 1 || found[0] < sum {
			t.Errorf("mount %s: lines %v (summary at %d), want one after the summary:\n%s", id, found, sum, out)
			continue
		}
		for _, w := range want {
			if !strings.Contains(lines[found[0]], w) {
				t.Errorf("mount %s's line %q lacks %q", id, lines[found[0]], w)
			}
		}
	}
}

// A save to a local cache that fails part way (the cache's filesystem
// fills while a pack is written, as a runner's disk does) fails the
// export and leaves the previous manifest, which the next runner restores
// exactly.
func TestInterruptedLocalMountSaveKeepsThePrevious(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	fs := t.TempDir()
	// Room for the first save (a 3 MB pack of random bytes), not for a
	// second one adding 8 MB more.
	if err := syscall.Mount("tmpfs", fs, "tmpfs", 0, "size=8m"); err != nil {
		t.Fatalf("mounting a small tmpfs for the cache: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(fs, syscall.MNT_DETACH) })
	cacheDir := filepath.Join(fs, "cache")
	src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "one\n"})
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/full:1", "--cache-to", "type=local,dest="+cacheDir, ".")
	saved := outFile(t, reg+"/ms/full:1", "after")

	grow := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\n" +
		"RUN --mount=type=cache,id=tree,target=/cache head -c 8000000 /dev/urandom > /cache/more\n"})
	dir, env = freshRunner(t, grow, time.Unix(1710000000, 0))
	res := testenv.Run(t, dir, env, "build", "--progress=plain", "--cache-from", "type=local,src="+cacheDir, "--cache-to", "type=local,dest="+cacheDir, ".")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "no space left") {
		t.Fatalf("the save to a full cache did not fail on the full disk (exit %d):\n%s", res.ExitCode, res.Stderr)
	}

	dir, env = freshRunner(t, src, time.Unix(1720000000, 0))
	if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("three\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/full:3", "--cache-from", "type=local,src="+cacheDir, ".")
	if strings.Contains(res.Stderr, "left out") || strings.Contains(res.Stderr, "starting empty") {
		t.Errorf("the restore after a failed save warned:\n%s", res.Stderr)
	}
	if got := outFile(t, reg+"/ms/full:3", "before"); got != saved {
		t.Errorf("after a failed save the restored mount is not the previous one\n got:\n%s\nwant:\n%s", got, saved)
	}
}
