package testenv

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// SymlinkPrefix marks a WriteFiles value that creates a symlink to the rest
// of the value instead of a regular file.
const SymlinkPrefix = "symlink:"

// WriteFiles writes files (relative path -> content) into dir, creating
// parent directories (0755). Regular files get mode 0644. A value starting
// with "symlink:" creates a symlink to the rest of the value; a key ending in
// "/" creates an empty directory. Paths that are absolute or climb out of dir
// fail the test, so a typo cannot scribble over the host.
func WriteFiles(t testing.TB, dir string, files map[string]string) {
	t.Helper()
	// Sorted so a directory entry ("a/") is made before files inside it and
	// errors are reported in a stable order.
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		content := files[name]
		if filepath.IsAbs(name) || !filepath.IsLocal(filepath.Clean(name)) {
			t.Fatalf("testenv: WriteFiles: path %q must be relative and stay inside the directory", name)
			return
		}
		p := filepath.Join(dir, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatalf("testenv: WriteFiles: %v", err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatalf("testenv: WriteFiles: %v", err)
		}
		if target, ok := strings.CutPrefix(content, SymlinkPrefix); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatalf("testenv: WriteFiles: %v", err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatalf("testenv: WriteFiles: %v", err)
		}
		// WriteFile honours the umask; the contract is 0644 exactly, since
		// tests compare modes that end up in image layers.
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatalf("testenv: WriteFiles: %v", err)
		}
	}
}
