package cli_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// mountDockerfile fills a cache mount with every kind of entry on its
// first use, appends the input to a log on every use, and dumps the tree
// as the step found it (/out/before) and as it left it (/out/after): type,
// mode, owner, mtime, link count, symlink target and content digest.
func mountDockerfile(base string) string {
	dump := `dump() { (cd /cache && find . -mindepth 1 | sort | while read f; do stat -c '%n %F %a %u %g %Y %h' "$f"; if [ -L "$f" ]; then readlink "$f"; elif [ -f "$f" ]; then md5sum < "$f"; fi; done); }`
	fill := `mkdir -p /cache/d/empty/deeper /cache/d/private && chmod 700 /cache/d/private && ` +
		`echo hi > /cache/d/f && chown 1234:5678 /cache/d/f && chmod 4755 /cache/d/f && ` +
		`ln -s f /cache/d/link && ln -s /etc/passwd /cache/abs && ln /cache/d/f /cache/d/hard && ` +
		`head -c 3000000 /dev/urandom > /cache/big && mkdir /cache/s && for i in $(seq 1 300); do echo $i > /cache/s/$i; done && ` +
		`touch /cache/.made`
	return "FROM " + base + "\nCOPY input.txt /input.txt\n" +
		"RUN --mount=type=cache,id=tree,target=/cache " + dump + "; mkdir -p /out; " +
		"if [ -e /cache/.made ]; then dump > /out/before; else " + fill + "; fi; " +
		"cat /input.txt >> /cache/log && dump > /out/after\n"
}

func outFile(t *testing.T, ref, name string) string {
	t.Helper()
	e, ok := testenv.Tree(t, testenv.Pull(t, ref))["out/"+name]
	if !ok {
		t.Fatalf("%s has no /out/%s", ref, name)
	}
	return string(e.Content)
}

type mountReport struct {
	Mounts []struct {
		ID            string `json:"id"`
		RestoredFrom  string `json:"restoredFrom"`
		RestoredFiles int    `json:"restoredFiles"`
		RestoredBytes int64  `json:"restoredBytes"`
		SavedFiles    int    `json:"savedFiles"`
		SavedBytes    int64  `json:"savedBytes"`
		UploadedFiles int    `json:"uploadedFiles"`
		UploadedBytes int64  `json:"uploadedBytes"`
	} `json:"mounts"`
}

func readMountReport(t *testing.T, path string) mountReport {
	t.Helper()
	var r mountReport
	if err := json.Unmarshal([]byte(readFile(t, path)), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Mounts) != 1 {
		t.Fatalf("report has %d mounts, want 1: %s", len(r.Mounts), readFile(t, path))
	}
	return r
}

// blobBytes is the bytes of the blobs in a local cache directory, by name.
func blobBytes(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	des, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	for _, de := range des {
		if fi, err := de.Info(); err == nil {
			out[de.Name()] = fi.Size()
		}
	}
	return out
}

// A cache mount saved by one runner is restored on a fresh one exactly
// as it was saved (contents, modes, owners, times, symlinks, hardlinks,
// empty directories); the second save, after a one-line change, uploads
// about that line, not the mount; a build whose RUN hits downloads no
// mount content. Through the real registry, and with type=local.
func TestCacheMountStoreMovesOnlyChanges(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	for _, kind := range []string{"registry", "local"} {
		t.Run(kind, func(t *testing.T) {
			p := newProxy(t, reg)
			localDir := filepath.Join(t.TempDir(), "cache")
			to := "type=registry,ref=" + p.host + "/ms/" + kind + ":cache"
			from := to
			if kind == "local" {
				to, from = "type=local,dest="+localDir, "type=local,src="+localDir
			}
			src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "one\n"})
			dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
			kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/"+kind+":1", "--cache-to", to, ".")
			saved := outFile(t, reg+"/ms/"+kind+":1", "after")
			if !strings.Contains(saved, "./d/hard regular file 4755 1234 5678") || !strings.Contains(saved, "./d/empty/deeper directory") {
				t.Fatalf("the first build did not make the tree:\n%s", saved)
			}

			dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
			if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			before := blobBytes(t, localDir)
			p.reset()
			report := filepath.Join(t.TempDir(), "r.json")
			res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/"+kind+":2", "--report", report, "--cache-from", from, "--cache-to", to, ".")
			if got := outFile(t, reg+"/ms/"+kind+":2", "before"); got != saved {
				t.Errorf("restored tree differs from the saved one\n got:\n%s\nwant:\n%s", got, saved)
			}
			var up int64
			if kind == "registry" {
				p.mu.Lock()
				up = p.up
				p.mu.Unlock()
			} else {
				for name, n := range blobBytes(t, localDir) {
					if _, ok := before[name]; !ok {
						up += n
					}
				}
			}
			r := readMountReport(t, report).Mounts[0]
			// The mount is over 3 MB of random bytes; the change is one
			// line. What went up besides the step layers and the index
			// is a small pack and the manifest.
			if up > 150<<10 {
				t.Errorf("a one-line change uploaded %d bytes (the mount holds %d):\n%s", up, r.SavedBytes, res.Stderr)
			}
			if r.RestoredFrom == "" || r.RestoredFiles != 304 || r.SavedFiles != 304 || r.UploadedFiles != 1 || r.UploadedBytes > 64<<10 || r.SavedBytes < 3000000 {
				t.Errorf("report: %+v", r)
			}

			// Every step hits: no mount content moves.
			dir, env = freshRunner(t, src, time.Unix(1720000000, 0))
			if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			p.reset()
			res = kiln(t, dir, env, "build", "--progress=plain", "--cache-from", from, ".")
			if strings.Contains(res.Stderr, "restored cache mount") {
				t.Errorf("a fully cached build restored the mount:\n%s", res.Stderr)
			}
			if kind == "registry" {
				p.mu.Lock()
				var down int64
				for _, n := range p.gets {
					down += n
				}
				p.mu.Unlock()
				if down > 64<<10 {
					t.Errorf("a fully cached build downloaded %d blob bytes", down)
				}
			}
		})
	}
}

// A save interrupted while it uploads leaves the previous manifest: the
// next runner restores the earlier contents. Interrupted as a cancelled
// CI job does (SIGINT) and as a runner that dies does (SIGKILL: no
// cleanup at all).
func TestInterruptedMountSaveKeepsThePrevious(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			p := newProxy(t, reg)
			repo := "ms/int" + strconv.Itoa(int(sig))
			cacheRef := p.host + "/" + repo + ":cache"
			src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "one\n"})
			dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
			kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/"+repo+":1", "--cache-to", "type=registry,ref="+cacheRef, ".")
			saved := outFile(t, reg+"/"+repo+":1", "after")

			dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
			if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			p.mu.Lock()
			p.stall = true
			p.mu.Unlock()
			cmd := exec.Command(testenv.Kiln(t), "build", "--progress=plain", "--cache-from", "type=registry,ref="+cacheRef, "--cache-to", "type=registry,ref="+cacheRef, ".")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), env...)
			out := &strings.Builder{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-p.stalled:
			case <-time.After(90 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("the upload never started:\n%s", out)
			}
			cmd.Process.Signal(sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("kiln did not stop within 30s of %s", sig)
			}
			p.mu.Lock()
			p.stall = false
			p.mu.Unlock()

			dir, env = freshRunner(t, src, time.Unix(1720000000, 0))
			if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("three\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/"+repo+":3", "--cache-from", "type=registry,ref="+cacheRef, ".")
			if strings.Contains(res.Stderr, "left out") || strings.Contains(res.Stderr, "starting empty") {
				t.Errorf("the restore after an interrupted save warned:\n%s", res.Stderr)
			}
			if got := outFile(t, reg+"/"+repo+":3", "before"); got != saved {
				t.Errorf("after an interrupted save the restored mount is not the previous one\n got:\n%s\nwant:\n%s", got, saved)
			}
		})
	}
}

// cacheFlags are the --cache-from and --cache-to values of one cache
// named name: a repository of reg, or a directory under tmp.
func cacheFlags(kind, reg, tmp, name string) (from, to string) {
	if kind == "local" {
		d := filepath.Join(tmp, name)
		return "type=local,src=" + d, "type=local,dest=" + d
	}
	ref := "type=registry,ref=" + reg + "/ms/" + name + ":cache"
	return ref, ref
}

// Two runners (two kiln processes) saving one mount id to one cache at
// once leave a manifest that restores whole to one of their trees.
func TestConcurrentMountSavesLeaveOneWhole(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	for _, kind := range []string{"registry", "local"} {
		t.Run(kind, func(t *testing.T) {
			from, to := cacheFlags(kind, reg, t.TempDir(), "conc"+kind)
			var wg sync.WaitGroup
			after := make([]string, 2)
			for i, input := range []string{"a\n", "b\n"} {
				src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": input})
				dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
				tag := reg + "/ms/conc" + kind + ":" + strings.TrimSpace(input)
				wg.Go(func() {
					res := testenv.Run(t, dir, env, "build", "--progress=plain", "--push", "-t", tag, "--cache-to", to, ".")
					if res.ExitCode != 0 {
						t.Errorf("concurrent build %d failed:\n%s", i, res.Stderr)
					}
				})
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			for i, tag := range []string{"a", "b"} {
				after[i] = outFile(t, reg+"/ms/conc"+kind+":"+tag, "after")
			}
			src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "c\n"})
			dir, env := freshRunner(t, src, time.Unix(1710000000, 0))
			res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/conc"+kind+":c", "--cache-from", from, ".")
			if strings.Contains(res.Stderr, "left out") || strings.Contains(res.Stderr, "starting empty") || !strings.Contains(res.Stderr, "restored cache mount tree") {
				t.Errorf("restore warned or did not happen:\n%s", res.Stderr)
			}
			if got := outFile(t, reg+"/ms/conc"+kind+":c", "before"); got != after[0] && got != after[1] {
				t.Errorf("the restored mount is neither saved tree:\n%s", got)
			}
		})
	}
}

// cache-mount-max-size keeps the most recently used files of a mount that
// outgrew it; the others are not saved, and a fresh runner lacks them.
func TestCacheMountMaxSizeDropsLeastRecentlyUsed(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	// Ten files of 100 kB: f0 is the oldest, f9 the newest.
	df := "FROM " + base + "\nCOPY input.txt /input.txt\n" +
		"RUN --mount=type=cache,id=cap,target=/cache mkdir -p /out && ls /cache > /out/before; " +
		"if [ ! -e /cache/f0 ]; then for i in 0 1 2 3 4 5 6 7 8 9; do head -c 100000 /dev/urandom > /cache/f$i; touch -t 20200101010$i /cache/f$i; done; fi\n"
	for _, kind := range []string{"registry", "local"} {
		t.Run(kind, func(t *testing.T) {
			from, to := cacheFlags(kind, reg, t.TempDir(), "cap"+kind)
			src := writeContext(t, map[string]string{"Dockerfile": df, "input.txt": "one\n"})
			dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
			res := kiln(t, dir, env, "build", "--progress=plain", "--cache-to", to+",cache-mount-max-size=450kB", ".")
			if !strings.Contains(res.Stderr, "least recently used files") {
				t.Errorf("no eviction reported:\n%s", res.Stderr)
			}
			dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
			if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/cap"+kind+":2", "--cache-from", from, ".")
			if got, want := outFile(t, reg+"/ms/cap"+kind+":2", "before"), "f6\nf7\nf8\nf9\n"; got != want {
				t.Errorf("the capped mount holds\n%s\nwant the four newest:\n%s", got, want)
			}
		})
	}
}

// A branch build reads its own cache, then main's: the mount comes from
// main's, and the branch's first save uploads about the change, since
// main's packs are in the repository already; the branch's cache then
// restores the mount on its own.
func TestBranchBuildFallsBackToMainsMount(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	p := newProxy(t, reg)
	mainRef, branchRef := p.host+"/ms/scope:main", p.host+"/ms/scope:branch"
	src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "one\n"})
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--cache-to", "type=registry,ref="+mainRef, ".")

	build := func(input, tag string) (string, int64, testenv.Result) {
		dir, env := freshRunner(t, src, time.Unix(1710000000, 0))
		if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte(input), 0o644); err != nil {
			t.Fatal(err)
		}
		p.reset()
		res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/scope:"+tag,
			"--cache-from", "type=registry,ref="+branchRef, "--cache-from", "type=registry,ref="+mainRef,
			"--cache-to", "type=registry,ref="+branchRef, ".")
		p.mu.Lock()
		defer p.mu.Unlock()
		return outFile(t, reg+"/ms/scope:"+tag, "after"), p.up, res
	}
	after, up, res := build("two\n", "b1")
	if !strings.Contains(res.Stderr, "restored cache mount tree from registry:"+mainRef) {
		t.Errorf("the branch did not restore main's mount:\n%s", res.Stderr)
	}
	if up > 150<<10 {
		t.Errorf("the branch's first save uploaded %d bytes for a one-line change", up)
	}
	_, _, res = build("three\n", "b2")
	if !strings.Contains(res.Stderr, "restored cache mount tree from registry:"+branchRef) {
		t.Errorf("the second branch build did not restore the branch's mount:\n%s", res.Stderr)
	}
	if got := outFile(t, reg+"/ms/scope:b2", "before"); got != after {
		t.Errorf("the branch's mount is not what its first build saved\n got:\n%s\nwant:\n%s", got, after)
	}
}

// A damaged pack in the cache is a warning and a mount without the files
// it held; the build succeeds and every file restored has its bytes.
func TestDamagedMountPackIsAWarning(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	src := writeContext(t, map[string]string{"Dockerfile": mountDockerfile(base), "input.txt": "one\n"})
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/dmg:1", "--cache-to", "type=local,dest="+cacheDir, ".")
	saved := outFile(t, reg+"/ms/dmg:1", "after")
	// The largest blob is the pack holding the 3 MB random file.
	var biggest string
	var size int64
	for name, n := range blobBytes(t, cacheDir) {
		if n > size {
			biggest, size = name, n
		}
	}
	p := filepath.Join(cacheDir, "blobs", "sha256", biggest)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	if err := os.WriteFile(filepath.Join(dir, "input.txt"), []byte("two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/ms/dmg:2", "--cache-from", "type=local,src="+cacheDir, ".")
	if !strings.Contains(res.Stderr, "files left out") {
		t.Errorf("no warning about the damaged pack:\n%s", res.Stderr)
	}
	got := outFile(t, reg+"/ms/dmg:2", "before")
	if got == saved || strings.Contains(got, "./big ") {
		t.Errorf("the damaged pack's file was restored:\n%s", got)
	}
	want := map[string]bool{}
	for _, l := range strings.Split(saved, "\n") {
		want[l] = true
	}
	for _, l := range strings.Split(got, "\n") {
		// Directory times differ where a file is missing; files and
		// their digests must be the saved ones.
		if !want[l] && !strings.Contains(l, " directory ") {
			t.Errorf("restored line not in the saved tree: %q", l)
		}
	}
}
