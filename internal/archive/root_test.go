package archive

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// Root resolves as filepath-securejoin (the library DESIGN.md trusts for
// scoped paths) does: on random trees of directories, files and symlinks
// (absolute, relative, climbing, dangling, looping), every path that
// securejoin resolves to an existing directory Root resolves to the same
// place, and Root resolves nothing else. The chain cache is exercised by
// resolving the paths one after the other without resetting it.
func TestRootMatchesSecureJoin(t *testing.T) {
	names := []string{"a", "b", "c", "l1", "l2", "l3"}
	for seed := int64(1); seed <= 40; seed++ {
		rng := rand.New(rand.NewSource(seed))
		dir := t.TempDir()
		var dirs []string
		dirs = append(dirs, "")
		for range 12 {
			parent := dirs[rng.Intn(len(dirs))]
			p := filepath.Join(parent, names[rng.Intn(3)])
			if os.Mkdir(filepath.Join(dir, p), 0o755) == nil {
				dirs = append(dirs, p)
			}
		}
		targets := []string{"/", "..", "../..", "../../../..", "/a", "a", "../a/b", "/b/c", "nowhere", "/a/../b", ".", "l1", "../l2/c"}
		for range 10 {
			parent := dirs[rng.Intn(len(dirs))]
			p := filepath.Join(dir, parent, names[3+rng.Intn(3)])
			_ = os.Symlink(targets[rng.Intn(len(targets))], p)
		}
		_ = os.WriteFile(filepath.Join(dir, dirs[rng.Intn(len(dirs))], "c"), []byte("f"), 0o644)

		r, err := OpenRoot(dir)
		if err != nil {
			t.Fatal(err)
		}
		for range 60 {
			var comps []string
			for range 1 + rng.Intn(5) {
				comps = append(comps, names[rng.Intn(len(names))])
			}
			p := strings.Join(comps, "/")
			want := ""
			sj, serr := securejoin.SecureJoin(dir, p)
			if serr == nil {
				if fi, err := os.Stat(sj); err == nil && fi.IsDir() {
					want, _ = filepath.Rel(dir, sj)
					if want == "." {
						want = ""
					}
				} else {
					serr = fmt.Errorf("not a directory")
				}
			}
			_, got, err := r.Dir(p, false)
			switch {
			case serr == nil && err != nil:
				t.Errorf("seed %d: Dir(%s) failed (%v), securejoin gives directory %q", seed, p, err, want)
			case serr != nil && err == nil:
				t.Errorf("seed %d: Dir(%s) = %q, securejoin gives no directory (%v)", seed, p, got, serr)
			case serr == nil && got != want:
				t.Errorf("seed %d: Dir(%s) = %q, securejoin %q", seed, p, got, want)
			}
		}
		r.Close()
	}
}
