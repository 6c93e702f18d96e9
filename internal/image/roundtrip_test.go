package image_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/snapshot"
	"golang.org/x/sys/unix"
)

type node struct {
	mode     fs.FileMode
	uid, gid uint32
	mtime    time.Time
	link     string
	data     string
	rdev     uint64
	ino      uint64 // only compared between names of one tree
}

func scan(t *testing.T, root string) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		n := node{mode: fi.Mode(), uid: st.Uid, gid: st.Gid, mtime: fi.ModTime().UTC(), ino: st.Ino}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			n.link, err = os.Readlink(p)
		case fi.Mode().IsRegular():
			var b []byte
			b, err = os.ReadFile(p)
			n.data = string(b)
		case fi.Mode()&fs.ModeDevice != 0:
			n.rdev = uint64(st.Rdev)
		}
		rel, _ := filepath.Rel(root, p)
		out[filepath.ToSlash(rel)] = n
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRoundTrip writes a tree into a layer and extracts it elsewhere: the
// files a user sees in the image must be the ones they built.
func TestRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("test needs root")
		}
		t.Skip("test needs root")
	}
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "app/bin"), 0o750))
	must(os.WriteFile(filepath.Join(src, "app/bin/run"), []byte("run"), 0o755))
	must(os.Lchown(filepath.Join(src, "app/bin/run"), 33, 44))
	must(unix.Chmod(filepath.Join(src, "app/bin/run"), 0o6755))
	must(os.Link(filepath.Join(src, "app/bin/run"), filepath.Join(src, "app/bin/run-too")))
	must(os.Symlink("../etc/missing", filepath.Join(src, "app/dangling")))
	must(os.Lchown(filepath.Join(src, "app/dangling"), 5, 6))
	must(os.Mkdir(filepath.Join(src, "tmp"), 0o777))
	must(unix.Chmod(filepath.Join(src, "tmp"), 0o1777))
	must(unix.Mkfifo(filepath.Join(src, "tmp/pipe"), 0o620))
	must(unix.Mknod(filepath.Join(src, "app/zero"), unix.S_IFCHR|0o644, int(unix.Mkdev(1, 5))))
	past := time.Date(2019, 5, 5, 5, 5, 5, 0, time.UTC)
	future := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clamp := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for p, tm := range map[string]time.Time{"app/bin/run": past, "app/bin": future, "app": past, "tmp/pipe": future, "tmp": past, "app/zero": past} {
		must(os.Chtimes(filepath.Join(src, p), tm, tm))
	}
	must(unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, "app/dangling"),
		[]unix.Timespec{unix.NsecToTimespec(future.UnixNano()), unix.NsecToTimespec(future.UnixNano())}, unix.AT_SYMLINK_NOFOLLOW))

	ch := image.Changes{Paths: []string{"app/bin/run", "app/bin/run-too", "app/dangling", "tmp/pipe", "app/zero"}}
	for _, c := range []image.Compression{image.Gzip, image.Zstd, image.Uncompressed} {
		t.Run(string(c), func(t *testing.T) {
			l, err := image.WriteLayer(context.Background(), src, ch, image.LayerOptions{Compression: c, Epoch: &clamp, Dir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(t.TempDir(), "rootfs")
			if err := snapshot.Materialize(context.Background(), dst, []v1.Layer{l}); err != nil {
				t.Fatal(err)
			}
			want, got := scan(t, src), scan(t, dst)
			if len(got) != len(want) {
				t.Errorf("extracted %d entries, want %d", len(got), len(want))
			}
			for p, w := range want {
				g, ok := got[p]
				if !ok {
					t.Errorf("%s missing after round trip", p)
					continue
				}
				if w.mtime.After(clamp) {
					w.mtime = clamp
				}
				if g.mode != w.mode || g.uid != w.uid || g.gid != w.gid || g.link != w.link || g.data != w.data || g.rdev != w.rdev || !g.mtime.Equal(w.mtime) {
					t.Errorf("%s:\n got %+v\nwant %+v", p, g, w)
				}
			}
			if got["app/bin/run"].ino != got["app/bin/run-too"].ino {
				t.Error("hardlinked names were extracted as separate files")
			}
		})
	}
}
