package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/mount"
)

// ent is one tar entry for test layers: body for files, link for symlinks
// ("->") and hardlinks ("=>"), a trailing "/" for directories.
type ent struct {
	name     string
	mode     int64
	uid, gid int
	body     string
}

func layerFrom(t *testing.T, ents ...ent) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: mtime, Typeflag: tar.TypeReg}
		switch {
		case strings.HasPrefix(e.body, "->"):
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.body[2:]
		case strings.HasPrefix(e.body, "=>"):
			h.Typeflag, h.Linkname = tar.TypeLink, e.body[2:]
		case strings.HasSuffix(e.name, "/"):
			h.Typeflag = tar.TypeDir
		default:
			h.Size = int64(len(e.body))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); h.Size > 0 && err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return layerOf(t, &buf)
}

// baseLayers is a two-layer image with owners, modes, links, a whiteout
// and an opaque directory, for steps to change.
func baseLayers(t *testing.T) []v1.Layer {
	return []v1.Layer{
		layerFrom(t,
			ent{name: "etc/"}, ent{name: "etc/passwd", body: "root:x:0:0"},
			ent{name: "etc/conf", mode: 0o600, uid: 1000, gid: 1000, body: "secret=1"},
			ent{name: "bin/"}, ent{name: "bin/sh", mode: 0o755, body: "#!sh"},
			ent{name: "bin/busybox", body: "=>bin/sh"},
			ent{name: "usr/"}, ent{name: "usr/lib/"}, ent{name: "usr/lib/a", body: "a"},
			ent{name: "usr/lib/b", body: "b"}, ent{name: "usr/lib/sub/"}, ent{name: "usr/lib/sub/c", body: "c"},
			ent{name: "data/", mode: 0o750, uid: 5, gid: 6}, ent{name: "data/x", body: "x"}, ent{name: "data/y", body: "y"},
			ent{name: "link", body: "->etc/passwd"}, ent{name: "dirlink", body: "->usr/lib"},
			ent{name: "var/"}, ent{name: "var/cache/"}, ent{name: "var/cache/f", body: "f"},
			ent{name: "opt/"}, ent{name: "opt/old/", mode: 0o700, uid: 3, gid: 4},
			ent{name: "opt/old/o1", body: "o1"}, ent{name: "opt/old/deep/"}, ent{name: "opt/old/deep/o2", body: "o2"},
			ent{name: "tmp/", mode: 0o1777},
		),
		layerFrom(t,
			ent{name: "etc/"}, ent{name: "etc/passwd", body: "root:x:0:0\nuser:x:1000:1000"},
			ent{name: "usr/"}, ent{name: "usr/lib/"}, ent{name: "usr/lib/.wh.b"},
			ent{name: "var/"}, ent{name: "var/cache/"}, ent{name: "var/cache/.wh..wh..opq"}, ent{name: "var/cache/g", body: "g"},
			ent{name: "home/"}, ent{name: "home/user/", uid: 1000, gid: 1000},
			ent{name: "home/user/.profile", uid: 1000, gid: 1000, body: "PS1=$"},
		),
	}
}

// step is what a RUN does to the mounted root r.
type step func(t *testing.T, r string)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, r, name, body string) {
	t.Helper()
	p := filepath.Join(r, name)
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte(body), 0o644))
}

// sh runs a command as a RUN step would (mv falls back to copying when
// overlayfs refuses to rename a lower directory with EXDEV).
func sh(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// conformanceSteps are RUN-like steps; deleted lists whiteouts every
// snapshotter's Diff must report for the step.
var conformanceSteps = []struct {
	name    string
	run     step
	deleted []string
}{
	{"create files", func(t *testing.T, r string) {
		write(t, r, "new/deep/dir/file", "new")
		write(t, r, "etc/added", "added")
		must(t, os.Mkdir(filepath.Join(r, "emptydir"), 0o711))
	}, nil},
	{"modify lower files", func(t *testing.T, r string) {
		write(t, r, "etc/passwd", "changed")
		f, err := os.OpenFile(filepath.Join(r, "usr/lib/a"), os.O_APPEND|os.O_WRONLY, 0)
		must(t, err)
		_, err = f.WriteString("+appended")
		must(t, err)
		must(t, f.Close())
	}, nil},
	{"chmod and chown lower entries", func(t *testing.T, r string) {
		must(t, os.Chmod(filepath.Join(r, "etc/conf"), 0o640))
		must(t, os.Lchown(filepath.Join(r, "usr/lib/a"), 7, 8))
		must(t, os.Chmod(filepath.Join(r, "data"), 0o700))
		must(t, os.Chmod(filepath.Join(r, "bin/sh"), 0o4755))
	}, nil},
	{"delete lower file and dirs", func(t *testing.T, r string) {
		must(t, os.Remove(filepath.Join(r, "etc/conf")))
		must(t, os.RemoveAll(filepath.Join(r, "usr/lib/sub")))
		must(t, os.RemoveAll(filepath.Join(r, "home")))
		must(t, os.Remove(filepath.Join(r, "var/cache/g")))
	}, []string{"etc/conf", "home", "usr/lib/sub", "var/cache/g"}},
	{"replace dir by file and file by dir", func(t *testing.T, r string) {
		must(t, os.RemoveAll(filepath.Join(r, "opt/old")))
		write(t, r, "opt/old", "now a file")
		must(t, os.Remove(filepath.Join(r, "data/x")))
		write(t, r, "data/x/inside", "now a dir")
	}, nil},
	{"opaque dir", func(t *testing.T, r string) {
		must(t, os.RemoveAll(filepath.Join(r, "usr/lib")))
		write(t, r, "usr/lib/fresh", "fresh")
		must(t, os.Mkdir(filepath.Join(r, "usr/lib/sub"), 0o755))
	}, nil},
	{"rename lower dir", func(t *testing.T, r string) {
		sh(t, r, "mv", "opt/old", "opt/renamed")
		write(t, r, "opt/renamed/o3", "o3")
	}, []string{"opt/old"}},
	{"rename lower dir then reuse its name", func(t *testing.T, r string) {
		sh(t, r, "mv", "usr/lib", "usr/lib2")
		write(t, r, "usr/lib/other", "other")
	}, nil},
	{"symlinks", func(t *testing.T, r string) {
		must(t, os.Symlink("../bin/sh", filepath.Join(r, "etc/shell")))
		must(t, os.Remove(filepath.Join(r, "link")))
		must(t, os.Symlink("/etc/conf", filepath.Join(r, "link")))
		must(t, os.Remove(filepath.Join(r, "data/y")))
		must(t, os.Symlink("nowhere", filepath.Join(r, "data/y")))
		must(t, os.Remove(filepath.Join(r, "dirlink")))
		must(t, os.Mkdir(filepath.Join(r, "dirlink"), 0o755))
	}, nil},
	{"hardlinks", func(t *testing.T, r string) {
		must(t, os.Link(filepath.Join(r, "usr/lib/a"), filepath.Join(r, "usr/lib/a2")))
		write(t, r, "new/f", "linked")
		must(t, os.Link(filepath.Join(r, "new/f"), filepath.Join(r, "new/g")))
	}, nil},
}

func stepNamed(t *testing.T, name string) step {
	for _, st := range conformanceSteps {
		if st.name == name {
			return st.run
		}
	}
	t.Fatalf("no step %q", name)
	return nil
}

// testSnapshotter is the conformance suite every snapshotter passes.
func testSnapshotter(t *testing.T, newS func(t *testing.T) (Snapshotter, string)) {
	t.Run("steps", func(t *testing.T) {
		s, _ := newS(t)
		base := baseLayers(t)
		for _, st := range conformanceSteps {
			t.Run(st.name, func(t *testing.T) {
				a, _ := runStep(t, s, base, st.run)
				ch, _, err := a.Diff(context.Background())
				must(t, err)
				for _, d := range st.deleted {
					if !slices.Contains(ch.Deleted, d) {
						t.Errorf("Deleted = %v, want it to hold %s", ch.Deleted, d)
					}
				}
				must(t, a.Release())
			})
		}
	})
	t.Run("no change gives an empty diff", func(t *testing.T) {
		s, _ := newS(t)
		a, err := s.Prepare(context.Background(), baseLayers(t))
		must(t, err)
		defer a.Release()
		target := t.TempDir()
		must(t, mount.All(a.Mounts(), target))
		_, _ = os.ReadFile(filepath.Join(target, "etc/passwd"))
		must(t, mount.Unmount(target))
		ch, _, err := a.Diff(context.Background())
		must(t, err)
		if len(ch.Paths)+len(ch.Deleted)+len(ch.Opaque) != 0 {
			t.Errorf("diff of an untouched snapshot = %+v", ch)
		}
	})
	t.Run("scratch", func(t *testing.T) {
		s, _ := newS(t)
		a, _ := runStep(t, s, nil, func(t *testing.T, r string) { write(t, r, "hello", "world") })
		must(t, a.Release())
	})
	t.Run("sequential steps commit and reuse", func(t *testing.T) {
		s, _ := newS(t)
		layers := baseLayers(t)
		// An order in which every step still finds what it changes.
		order := []string{"create files", "modify lower files", "chmod and chown lower entries",
			"rename lower dir", "delete lower file and dirs", "replace dir by file and file by dir",
			"hardlinks", "symlinks", "opaque dir"}
		for i, name := range order {
			a, l := runStep(t, s, layers, stepNamed(t, name))
			must(t, a.Commit(context.Background(), l))
			if _, _, err := a.Diff(context.Background()); err == nil {
				t.Errorf("step %d: Diff after Commit succeeded", i)
			}
			must(t, a.Release())
			must(t, a.Release())
			layers = append(layers, l)
		}
	})
	t.Run("repeated layers", func(t *testing.T) {
		// RUN true (or a RUN writing only into a cache mount) yields the
		// same empty layer each time; a layer can also come back after
		// others changed what it touched. The view must stay the layers
		// applied in order.
		s, _ := newS(t)
		base := baseLayers(t)
		empty := layerFrom(t)
		mk := layerFrom(t, ent{name: "etc/"}, ent{name: "etc/again", body: "1"}, ent{name: "usr/"}, ent{name: "usr/lib/"}, ent{name: "usr/lib/.wh.a"})
		undo := layerFrom(t, ent{name: "etc/"}, ent{name: "etc/.wh.again"}, ent{name: "usr/"}, ent{name: "usr/lib/"}, ent{name: "usr/lib/a", body: "back"})
		for name, layers := range map[string][]v1.Layer{
			"adjacent":           append(slices.Clone(base), empty, empty, empty),
			"non-adjacent":       append(slices.Clone(base), empty, mk, empty, undo, empty),
			"undone then redone": append(slices.Clone(base), mk, undo, mk),
			"base repeated":      append(slices.Clone(base), base[0], empty, base[0]),
		} {
			t.Run(name, func(t *testing.T) {
				a, l := runStep(t, s, layers, func(t *testing.T, r string) { write(t, r, "after", name) })
				must(t, a.Commit(context.Background(), l))
				must(t, a.Release())
				// The committed layer may itself repeat further up.
				a, _ = runStep(t, s, append(append(slices.Clone(layers), l), empty, l), func(t *testing.T, r string) {})
				must(t, a.Release())
			})
		}
	})
	t.Run("release leaves nothing", func(t *testing.T) {
		s, root := newS(t)
		var actives []Active
		for range 3 {
			a, err := s.Prepare(context.Background(), baseLayers(t))
			must(t, err)
			actives = append(actives, a)
		}
		for _, a := range actives {
			must(t, a.Release())
			must(t, a.Release())
		}
		if left, _ := os.ReadDir(filepath.Join(root, "a")); len(left) != 0 {
			t.Errorf("left under root/a after Release: %v", left)
		}
	})
}

// runStep prepares layers, mounts, runs the step, records the view, diffs,
// writes the layer and checks that all layers materialized give the view.
func runStep(t *testing.T, s Snapshotter, layers []v1.Layer, run step) (Active, v1.Layer) {
	t.Helper()
	ctx := context.Background()
	a, err := s.Prepare(ctx, layers)
	must(t, err)
	target := t.TempDir()
	must(t, mount.All(a.Mounts(), target))
	t.Cleanup(func() { _ = mount.UnmountAll(target) })
	if got, want := snap(t, target), materialized(t, layers); got != want {
		t.Fatalf("prepared view differs from the layers materialized:\n%s", lineDiff(want, got))
	}
	run(t, target)
	want := snap(t, target)
	must(t, mount.Unmount(target))
	ch, dir, err := a.Diff(ctx)
	must(t, err)
	l, err := image.WriteLayer(ctx, dir, image.Changes(ch), image.LayerOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("write layer from %+v: %v", ch, err)
	}
	if got := materialized(t, append(append([]v1.Layer(nil), layers...), l)); got != want {
		t.Errorf("layers+diff materialized differ from the step's view (changes %+v):\n%s", ch, lineDiff(want, got))
	}
	return a, l
}

func materialized(t *testing.T, layers []v1.Layer) string {
	t.Helper()
	dir := t.TempDir()
	must(t, Materialize(context.Background(), dir, layers))
	return snap(t, dir)
}

// snap describes every path under dir: type, mode, owner, content digest
// or link target, and for hardlinked files the first name sharing its
// inode. Times are left out: layers normalize them.
func snap(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	inodes := map[uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %v %d:%d", rel, fi.Mode(), st.Uid, st.Gid)
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			line += " " + hex.EncodeToString(sum[:6])
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					line += " linked to " + first
				} else {
					inodes[st.Ino] = rel
				}
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			line += " -> " + target
		}
		lines = append(lines, line)
		return nil
	})
	must(t, err)
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func lineDiff(want, got string) string {
	w, g := map[string]bool{}, map[string]bool{}
	for _, l := range strings.Split(want, "\n") {
		w[l] = true
	}
	for _, l := range strings.Split(got, "\n") {
		g[l] = true
	}
	var out []string
	for l := range w {
		if !g[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range g {
		if !w[l] {
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

func TestOverlayConformance(t *testing.T) {
	testSnapshotter(t, func(t *testing.T) (Snapshotter, string) { return newTestSnapshotter(t, NameOverlay) })
}

func TestCopyConformance(t *testing.T) {
	testSnapshotter(t, func(t *testing.T) (Snapshotter, string) { return newTestSnapshotter(t, NameCopy) })
}

// newTestSnapshotter makes a snapshotter on a fresh root; without root or
// overlay support it skips, or fails under CI=true.
func newTestSnapshotter(t *testing.T, name string) (Snapshotter, string) {
	t.Helper()
	requireRoot(t)
	root := t.TempDir()
	if name == NameOverlay && !OverlaySupported(root) {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true: overlay not supported under %s: %s", root, probeError(root))
		}
		t.Skipf("overlay not supported under %s", root)
	}
	s, err := New(name, root)
	must(t, err)
	if s.Name() != name {
		t.Fatalf("Name() = %q, want %q", s.Name(), name)
	}
	return s, root
}
