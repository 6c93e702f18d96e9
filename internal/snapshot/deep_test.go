package snapshot

import (
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
)

// A layer listing a chain of 2000 directories (6 KB of path, past
// PATH_MAX) and a file at its end, as kiln writes one for a deep ADD:
// every entry was resolved from the root again, each component with its
// own full-path lstat (cubic). Each entry now costs the step from its
// parent, and the tree is checked, and diffed, through descriptors.
func TestApplyDeepLayer(t *testing.T) {
	requireRoot(t)
	const depth = 2000
	var entries []string
	p := ""
	for range depth {
		p += "dd/"
		entries = append(entries, p)
	}
	entries = append(entries, p+"leaf", p+".wh.gone", strings.Repeat("dd/", depth/2)+".wh..wh..opq")
	for name, apply := range map[string]func(context.Context, string, interface{ Read([]byte) (int, error) }) error{
		"Apply": func(ctx context.Context, dir string, r interface{ Read([]byte) (int, error) }) error {
			return Apply(ctx, dir, r)
		},
		"ApplyOverlay": func(ctx context.Context, dir string, r interface{ Read([]byte) (int, error) }) error {
			return ApplyOverlay(ctx, dir, r)
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			start := time.Now()
			if err := apply(context.Background(), dir, tarOf(t, entries...)); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			r, err := archive.OpenRoot(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			fd, _, err := r.Dir(strings.TrimSuffix(p, "/"), false)
			if err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Fstatat(fd, "leaf", &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Size != int64(len(p+"leaf")) {
				t.Errorf("leaf: %v, size %d", err, st.Size)
			}
			n := 0
			if err := archive.Walk(context.Background(), dir, func(*archive.Entry) error { n++; return nil }); err != nil {
				t.Fatal(err)
			}
			if want := depth + 1; name == "ApplyOverlay" {
				if n != want+1 { // the whiteout device
					t.Errorf("walked %d entries, want %d", n, want+1)
				}
			} else if n != want {
				t.Errorf("walked %d entries, want %d", n, want)
			}
			if took > slowdown*5*time.Second {
				t.Errorf("%s of a %d-deep layer took %v", name, depth, took)
			}
			t.Logf("%s: %d deep in %v", name, depth, took)
		})
	}
}
