package buildctx

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFilesNamesEachFileAndIgnoresOwnerAndTime(t *testing.T) {
	dir := t.TempDir()
	for p, c := range map[string]string{"a.txt": "a", "src/b.go": "b", "src/c.go": "c"} {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c, err := Open(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	before, _, err := c.Files(context.Background(), []string{"src"})
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range before {
		paths = append(paths, f.Path)
	}
	if strings.Join(paths, ",") != "src,src/b.go,src/c.go" {
		t.Fatalf("paths = %v", paths)
	}
	// New times and owners (a fresh checkout) change nothing.
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "src/b.go"), future, future); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(dir, "src/b.go"), 1234, 1234); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	same, _, _ := c.Files(context.Background(), []string{"src"})
	for i := range before {
		if before[i] != same[i] {
			t.Errorf("%s: digest changed with mtime/owner only", before[i].Path)
		}
	}
	// A content change moves exactly that file's digest.
	if err := os.WriteFile(filepath.Join(dir, "src/c.go"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	after, _, _ := c.Files(context.Background(), []string{"src"})
	for i := range before {
		changed := before[i].Digest != after[i].Digest
		if changed != (before[i].Path == "src/c.go") {
			t.Errorf("%s: changed=%v", before[i].Path, changed)
		}
	}
}
