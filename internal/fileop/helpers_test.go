package fileop

import (
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"
)

// spec describes a file system object for mkTree: a file (data), a dir
// (dir=true) or a symlink (link != "").
type spec struct {
	data  string
	dir   bool
	link  string
	mode  fs.FileMode
	uid   int
	gid   int
	mtime time.Time
}

var epoch = time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)

func mkTree(t *testing.T, root string, tree map[string]spec) {
	t.Helper()
	// parents before children, and dir mtimes after everything
	names := make([]string, 0, len(tree))
	for n := range tree {
		names = append(names, n)
	}
	sortStrings(names)
	for _, n := range names {
		s := tree[n]
		p := filepath.Join(root, filepath.FromSlash(n))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case s.link != "":
			if err := os.Symlink(s.link, p); err != nil {
				t.Fatal(err)
			}
			continue
		case s.dir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(p, []byte(s.data), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Lchown(p, s.uid, s.gid); err != nil {
			t.Fatal(err)
		}
		mode := s.mode
		if mode == 0 {
			mode = 0o644
			if s.dir {
				mode = 0o755
			}
		}
		if err := os.Chmod(p, fileMode(mode)); err != nil {
			t.Fatal(err)
		}
	}
	for i := len(names) - 1; i >= 0; i-- {
		s := tree[names[i]]
		if s.link != "" {
			continue
		}
		mt := s.mtime
		if mt.IsZero() {
			mt = epoch
		}
		if err := os.Chtimes(filepath.Join(root, filepath.FromSlash(names[i])), mt, mt); err != nil {
			t.Fatal(err)
		}
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// got describes what is at a path in a rootfs.
type got struct {
	data string
	dir  bool
	link string
	mode fs.FileMode // perm + setuid/setgid/sticky
	uid  int
	gid  int
}

func stat(t *testing.T, root, rel string) (got, bool) {
	t.Helper()
	p := filepath.Join(root, filepath.FromSlash(rel))
	fi, err := os.Lstat(p)
	if err != nil {
		return got{}, false
	}
	st := fi.Sys().(*syscall.Stat_t)
	g := got{uid: int(st.Uid), gid: int(st.Gid), mode: fs.FileMode(st.Mode & 0o7777)}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		g.link, _ = os.Readlink(p)
		g.mode = 0
	case fi.IsDir():
		g.dir = true
	default:
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		g.data = string(b)
	}
	return g, true
}

func mtime(t *testing.T, root, rel string) time.Time {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	return fi.ModTime()
}

// expectTree checks each listed path; a nil-valued entry (absent=true)
// asserts the path does not exist.
func expectTree(t *testing.T, root string, want map[string]*got) {
	t.Helper()
	for rel, w := range want {
		g, ok := stat(t, root, rel)
		if w == nil {
			if ok {
				t.Errorf("%s exists, want absent", rel)
			}
			continue
		}
		if !ok {
			t.Errorf("%s missing", rel)
			continue
		}
		if !reflect.DeepEqual(g, *w) {
			t.Errorf("%s = %+v, want %+v", rel, g, *w)
		}
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("test needs root (chown, mknod)")
		}
		t.Skip("needs root")
	}
}

// symMode is a symbolic --chmod.
func symMode(t *testing.T, s string) *Chmod {
	t.Helper()
	c, err := ParseChmod(s)
	if err != nil || c.sym == nil {
		t.Fatalf("ParseChmod(%q) = %v, %v", s, c, err)
	}
	return c
}

// fmode is an octal --chmod, raw setuid/setgid/sticky bits (0o4000) accepted.
func fmode(m fs.FileMode) *Chmod { return &Chmod{octal: fileMode(m)} }
