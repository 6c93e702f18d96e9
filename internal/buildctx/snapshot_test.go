package buildctx_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/buildctx"
	"github.com/kiln-build/kiln/internal/fileop"
)

// TestCopyCopiesWhatWasHashed drives COPY's two phases as the builder
// does: Files computes the cache key, something changes the context, then
// the copy reads it. A change must fail the copy (its layer would be cached
// under a key that does not describe it); no change, or a change COPY does
// not read, must not.
func TestCopyCopiesWhatWasHashed(t *testing.T) {
	old := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tt := range []struct {
		name    string
		sources []string
		exclude []string
		add     bool                           // ADD, which extracts app.tar
		before  func(t *testing.T, dir string) // before hashing
		change  func(t *testing.T, dir string) // between hashing and copying
		changed string                         // the path the error names; "" = the copy succeeds
	}{
		{name: "unchanged", sources: []string{"a.txt", "src"}},
		{name: "bytes rewritten, same size and mtime", sources: []string{"a.txt", "src"}, changed: "src/b.go",
			change: func(t *testing.T, dir string) {
				p := filepath.Join(dir, "src/b.go")
				write(t, p, "B")
				if err := os.Chtimes(p, old, old); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "named file rewritten", sources: []string{"a.txt", "src"}, changed: "a.txt",
			change: func(t *testing.T, dir string) { write(t, filepath.Join(dir, "a.txt"), "A2") }},
		{name: "file appeared", sources: []string{"a.txt", "src"}, changed: "src/new.go",
			change: func(t *testing.T, dir string) { write(t, filepath.Join(dir, "src/new.go"), "n") }},
		{name: "file disappeared", sources: []string{"src"}, changed: "src/c.go",
			change: func(t *testing.T, dir string) { remove(t, filepath.Join(dir, "src/c.go")) }},
		{name: "glob match disappeared", sources: []string{"src/*.go"}, changed: "src/c.go",
			change: func(t *testing.T, dir string) { remove(t, filepath.Join(dir, "src/c.go")) }},
		{name: "mode changed", sources: []string{"src"}, changed: "src/b.go",
			change: func(t *testing.T, dir string) {
				if err := os.Chmod(filepath.Join(dir, "src/b.go"), 0o755); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "symlink retargeted", sources: []string{"src"}, changed: "src/link",
			change: func(t *testing.T, dir string) {
				remove(t, filepath.Join(dir, "src/link"))
				if err := os.Symlink("c.go", filepath.Join(dir, "src/link")); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "glob matches a dangling symlink", sources: []string{"src/*"},
			before: func(t *testing.T, dir string) {
				if err := os.Symlink("nowhere", filepath.Join(dir, "src/dangling")); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "ADD archive unchanged", sources: []string{"app.tar"}, add: true},
		{name: "ADD archive rewritten", sources: []string{"app.tar"}, add: true, changed: "app.tar",
			change: func(t *testing.T, dir string) { writeTar(t, filepath.Join(dir, "app.tar"), "b.go", "B") }},
		{name: "ignored file appeared", sources: []string{"src"},
			change: func(t *testing.T, dir string) { write(t, filepath.Join(dir, "src/.b.go.swp"), "x") }},
		{name: "file the copy excludes rewritten", sources: []string{"src"}, exclude: []string{"c.go"},
			change: func(t *testing.T, dir string) { write(t, filepath.Join(dir, "src/c.go"), "C2") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, filepath.Join(dir, ".dockerignore"), "**/*.swp\n")
			write(t, filepath.Join(dir, "a.txt"), "A")
			write(t, filepath.Join(dir, "src/b.go"), "b")
			write(t, filepath.Join(dir, "src/c.go"), "c")
			if err := os.Symlink("b.go", filepath.Join(dir, "src/link")); err != nil {
				t.Fatal(err)
			}
			writeTar(t, filepath.Join(dir, "app.tar"), "b.go", "b")
			for _, p := range []string{"a.txt", "src/b.go", "src/c.go", "app.tar"} {
				if err := os.Chtimes(filepath.Join(dir, p), old, old); err != nil {
					t.Fatal(err)
				}
			}
			if tt.before != nil {
				tt.before(t, dir)
			}
			c, err := buildctx.Open(dir, "")
			if err != nil {
				t.Fatal(err)
			}
			_, snap, err := c.Files(context.Background(), tt.sources)
			if err != nil {
				t.Fatal(err)
			}
			if tt.change != nil {
				tt.change(t, dir)
			}
			rootfs := t.TempDir()
			cp := fileop.Copy{Src: fileop.Tree{Root: c.Root(), Exclude: c.Excluded, ResetOwner: true, Verify: snap.Check},
				Sources: tt.sources, Dest: "/app/", Exclude: tt.exclude}
			if tt.add {
				_, err = fileop.Add{Copy: cp}.Apply(context.Background(), rootfs)
			} else {
				_, err = cp.Apply(context.Background(), rootfs)
			}
			if err == nil {
				err = snap.Missing()
			}
			if tt.changed == "" {
				if err != nil {
					t.Fatalf("copy of an unchanged context: %v", err)
				}
				if _, err := os.Stat(filepath.Join(rootfs, "app/b.go")); err != nil {
					t.Fatalf("nothing copied: %v", err)
				}
				return
			}
			if !errors.Is(err, buildctx.ErrChanged) {
				t.Fatalf("copy after %s: err = %v, want %v", tt.name, err, buildctx.ErrChanged)
			}
			want := `context file "` + tt.changed + `" changed while the build was reading it; nothing was cached (run the build again)`
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error = %q, want it to say %q", err, want)
			}
		})
	}
}

func write(t *testing.T, p, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func remove(t *testing.T, p string) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

// writeTar writes a tar archive holding one file.
func writeTar(t *testing.T, p, name, data string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	write(t, p, buf.String())
}
