package buildctx

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestExcluded(t *testing.T) {
	tests := []struct {
		name     string
		ignore   string
		rel      string
		isDir    bool
		excluded bool
	}{
		{"no rules", "", "a.txt", false, false},
		{"plain match", "*.log\n", "x.log", false, true},
		{"star is one level", "*.log\n", "sub/x.log", false, false},
		{"double star", "**/*.log\n", "sub/deep/x.log", false, true},
		{"leading slash stripped", "/secret\n", "secret", false, true},
		{"parent dir excludes children", "node_modules\n", "node_modules/a/b.js", false, true},
		{"exception re-includes", "*.md\n!README.md\n", "README.md", false, false},
		{"exception only its file", "*.md\n!README.md\n", "CHANGES.md", false, true},
		{"later rule wins", "!keep\nkeep\n", "keep", false, true},
		{"comment ignored", "# *.go\n", "main.go", false, false},
		{"dir with exception beneath walked", "docs\n!docs/keep.md\n", "docs", true, false},
		{"file re-included under excluded dir", "docs\n!docs/keep.md\n", "docs/keep.md", false, false},
		{"sibling stays excluded", "docs\n!docs/keep.md\n", "docs/other.md", false, true},
		{"dir without exception beneath skipped", "docs\nvendor\n!docs/keep.md\n", "vendor", true, true},
		{"wildcard exception keeps dirs walkable", "build\n!**/*.keep\n", "build", true, false},
		{"root never excluded", "*\n", ".", true, false},
		{"everything excluded", "*\n", "Dockerfile", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.ignore != "" {
				writeTree(t, dir, map[string]string{".dockerignore": tt.ignore})
			}
			c, err := Open(dir, filepath.Join(dir, "Dockerfile"))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Excluded(tt.rel, tt.isDir); got != tt.excluded {
				t.Errorf("Excluded(%q, %v) = %v, want %v", tt.rel, tt.isDir, got, tt.excluded)
			}
		})
	}
}

func TestOpenIgnoreFilePrecedence(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		".dockerignore":                     "a.txt\n",
		"build/app.Dockerfile":              "FROM scratch\n",
		"build/app.Dockerfile.dockerignore": "b.txt\n",
		"build/other.Dockerfile":            "FROM scratch\n",
	})
	tests := []struct {
		name       string
		dockerfile string
		excluded   map[string]bool
	}{
		{"specific file wins, not merged", filepath.Join(dir, "build/app.Dockerfile"), map[string]bool{"a.txt": false, "b.txt": true}},
		{"falls back to context .dockerignore", filepath.Join(dir, "build/other.Dockerfile"), map[string]bool{"a.txt": true, "b.txt": false}},
		{"stdin Dockerfile uses context file", "", map[string]bool{"a.txt": true, "b.txt": false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Open(dir, tt.dockerfile)
			if err != nil {
				t.Fatal(err)
			}
			if c.Root() != dir {
				t.Errorf("Root() = %q, want %q", c.Root(), dir)
			}
			for rel, want := range tt.excluded {
				if got := c.Excluded(rel, false); got != want {
					t.Errorf("Excluded(%q) = %v, want %v", rel, got, want)
				}
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"file": "x"})
	if _, err := Open(filepath.Join(dir, "file"), ""); !errors.Is(err, ErrNotDir) {
		t.Errorf("Open(file) err = %v, want ErrNotDir", err)
	}
	if _, err := Open(filepath.Join(dir, "missing"), ""); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(missing) err = %v, want not-exist", err)
	}
}

func TestDigest(t *testing.T) {
	ctx := context.Background()
	base := map[string]string{"src/a.go": "package a", "src/b.go": "package b", "README": "hi", "src/x.log": "noise"}
	mk := func(t *testing.T, files map[string]string, ignore []string) *Context {
		dir := t.TempDir()
		writeTree(t, dir, files)
		c, err := NewWithPatterns(dir, ignore)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	d := func(t *testing.T, c *Context, rels ...string) string {
		got, err := c.Digest(ctx, rels)
		if err != nil {
			t.Fatal(err)
		}
		return got.String()
	}
	ref := d(t, mk(t, base, nil), "src")

	t.Run("same content same digest", func(t *testing.T) {
		c := mk(t, base, nil)
		// mtimes must not matter
		if err := os.Chtimes(filepath.Join(c.Root(), "src/a.go"), time0, time0); err != nil {
			t.Fatal(err)
		}
		if got := d(t, c, "src"); got != ref {
			t.Errorf("digest changed with mtime: %s != %s", got, ref)
		}
	})
	t.Run("bytes change digest", func(t *testing.T) {
		files := map[string]string{}
		for k, v := range base {
			files[k] = v
		}
		files["src/a.go"] = "package changed"
		if got := d(t, mk(t, files, nil), "src"); got == ref {
			t.Error("digest did not change with content")
		}
	})
	t.Run("mode changes digest", func(t *testing.T) {
		c := mk(t, base, nil)
		if err := os.Chmod(filepath.Join(c.Root(), "src/a.go"), 0o755); err != nil {
			t.Fatal(err)
		}
		if got := d(t, c, "src"); got == ref {
			t.Error("digest did not change with mode")
		}
	})
	t.Run("owner changes digest", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to chown")
		}
		c := mk(t, base, nil)
		if err := os.Lchown(filepath.Join(c.Root(), "src/a.go"), 1000, 1000); err != nil {
			t.Fatal(err)
		}
		if got := d(t, c, "src"); got == ref {
			t.Error("digest did not change with owner")
		}
	})
	t.Run("symlink target changes digest", func(t *testing.T) {
		c1, c2 := mk(t, base, nil), mk(t, base, nil)
		if err := os.Symlink("a.go", filepath.Join(c1.Root(), "src/l")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("b.go", filepath.Join(c2.Root(), "src/l")); err != nil {
			t.Fatal(err)
		}
		if d(t, c1, "src") == d(t, c2, "src") {
			t.Error("digest ignores symlink target")
		}
	})
	t.Run("excluded files do not count", func(t *testing.T) {
		files := map[string]string{}
		for k, v := range base {
			files[k] = v
		}
		c1 := mk(t, files, []string{"**/*.log"})
		files["src/x.log"] = "other noise"
		c2 := mk(t, files, []string{"**/*.log"})
		if d(t, c1, "src") != d(t, c2, "src") {
			t.Error("excluded file changed digest")
		}
	})
	t.Run("order of rels irrelevant", func(t *testing.T) {
		c := mk(t, base, nil)
		if d(t, c, "src", "README") != d(t, c, "README", "src") {
			t.Error("digest depends on rels order")
		}
	})
	t.Run("files outside rels irrelevant", func(t *testing.T) {
		files := map[string]string{}
		for k, v := range base {
			files[k] = v
		}
		files["README"] = "changed"
		if got := d(t, mk(t, files, nil), "src"); got != ref {
			t.Error("unselected file changed digest")
		}
	})
	t.Run("glob selects like COPY", func(t *testing.T) {
		c := mk(t, base, nil)
		if d(t, c, "src/*.go") != d(t, c, "src/a.go", "src/b.go") {
			t.Error("glob digest differs from the files it matches")
		}
		if d(t, c, "src/*.go") == d(t, c, "src/a.go") {
			t.Error("glob digest ignores a match")
		}
	})
	t.Run("named symlink is followed", func(t *testing.T) {
		c1, c2 := mk(t, base, nil), mk(t, base, nil)
		for i, c := range []*Context{c1, c2} {
			if err := os.Symlink("src/a.go", filepath.Join(c.Root(), "link")); err != nil {
				t.Fatal(err)
			}
			if i == 1 {
				writeTree(t, c.Root(), map[string]string{"src/a.go": "edited"})
			}
		}
		if d(t, c1, "link") == d(t, c2, "link") {
			t.Error("digest of a symlink source ignores its target's content")
		}
	})
	t.Run("errors", func(t *testing.T) {
		c := mk(t, base, nil)
		if _, err := c.Digest(ctx, []string{"../etc"}); !errors.Is(err, ErrOutsideContext) {
			t.Errorf("../etc: err = %v, want ErrOutsideContext", err)
		}
		if _, err := c.Digest(ctx, []string{"missing"}); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("missing: err = %v, want not-exist", err)
		}
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := c.Digest(cctx, []string{"src"}); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled: err = %v", err)
		}
	})
}

var time0 = time.Unix(1, 0)

func TestHideKilnsOwnPaths(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"state/kiln/x", "out/f", "keep/f", ".out.tar.tmp-1/f", "tmp/kiln-build-7/f", "tmp/other"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	// A .dockerignore exception cannot bring a hidden path back.
	c, err := NewWithPatterns(dir, []string{"nothing", "!state"})
	if err != nil {
		t.Fatal(err)
	}
	c.Hide(filepath.Join(link, "state"), // through a symlink
		filepath.Join(dir, "out"), filepath.Join(dir, ".out.tar.tmp-*"),
		filepath.Join(dir, "tmp", "kiln-build-*"),
		filepath.Join(dir, "not-yet", "made"),    // created later
		dir, filepath.Dir(dir), "/elsewhere", "") // never the root, never outside
	for rel, want := range map[string]bool{
		"state": true, "state/kiln/x": true, "out": true, "out/f": true, ".out.tar.tmp-1": true,
		"tmp/kiln-build-7/f": true, "not-yet/made/f": true,
		"keep/f": false, "tmp/other": false, "outside": false, "stat": false, "not-yet": false, ".": false,
	} {
		if got := c.Excluded(rel, false); got != want {
			t.Errorf("Excluded(%q) = %v, want %v", rel, got, want)
		}
	}
	d, _, err := c.Files(context.Background(), []string{"."})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range d {
		paths = append(paths, f.Path)
	}
	if want := "|keep|keep/f|tmp|tmp/other"; strings.Join(paths, "|") != want {
		t.Errorf("digest covers %q, want %q", strings.Join(paths, "|"), want)
	}
}
