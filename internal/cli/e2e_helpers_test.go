package cli_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/testenv"
)

// kiln runs the kiln binary and fails the test unless it exits 0.
func kiln(t testing.TB, dir string, env []string, args ...string) testenv.Result {
	t.Helper()
	res := testenv.Run(t, dir, env, args...)
	if res.ExitCode != 0 {
		t.Fatalf("kiln %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), res.ExitCode, res.Stdout, res.Stderr)
	}
	return res
}

// writeContext writes files into a new directory and returns it.
func writeContext(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	testenv.WriteFiles(t, dir, files)
	return dir
}

// tarGz returns a gzip-compressed tar holding files (path -> content).
func tarGz(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for name, content := range files {
		hdr := &tar.Header{Name: name, Mode: 0o640, Size: int64(len(content)), Typeflag: tar.TypeReg,
			Uid: 7, Gid: 8, ModTime: time.Unix(1700000000, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(content)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tarGzEntries writes the headers in order, each regular file's Size
// bytes taken from data in turn.
func tarGzEntries(t *testing.T, hdrs []*tar.Header, data string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, h := range hdrs {
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(data[:h.Size])); err != nil {
				t.Fatal(err)
			}
			data = data[h.Size:]
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type want struct {
	typ      byte
	mode     int64
	uid, gid int
	content  string // checked when typ is a regular file
	link     string // checked for symlinks
}

func checkTree(t *testing.T, tree map[string]testenv.Entry, wants map[string]want) {
	t.Helper()
	for p, w := range wants {
		e, ok := tree[p]
		if !ok {
			t.Errorf("%s: missing from the image", p)
			continue
		}
		if e.Type != w.typ {
			t.Errorf("%s: type %q, want %q", p, e.Type, w.typ)
		}
		if e.Mode != w.mode {
			t.Errorf("%s: mode %#o, want %#o", p, e.Mode, w.mode)
		}
		if e.UID != w.uid || e.GID != w.gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", p, e.UID, e.GID, w.uid, w.gid)
		}
		if w.typ == tar.TypeReg && string(e.Content) != w.content {
			t.Errorf("%s: content %q, want %q", p, e.Content, w.content)
		}
		if w.typ == tar.TypeSymlink && e.Linkname != w.link {
			t.Errorf("%s: link to %q, want %q", p, e.Linkname, w.link)
		}
	}
}

func configOf(t *testing.T, img v1.Image) *v1.ConfigFile {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// copyDir copies a context to a new directory, giving every file a new
// mtime, as a fresh checkout would.
func copyDir(t testing.TB, src string, mtime time.Time) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		switch {
		case info.IsDir():
			if err := os.MkdirAll(target, info.Mode().Perm()); err != nil {
				return err
			}
		case info.Mode()&os.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.WriteFile(target, b, info.Mode().Perm()); err != nil {
				return err
			}
		}
		return os.Chtimes(target, mtime, mtime)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}
