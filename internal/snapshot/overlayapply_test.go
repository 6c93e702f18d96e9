package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func TestApplyOverlayForm(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name      string
		entries   []string
		whiteouts []string // must be 0/0 char devices
		opaque    []string // must carry trusted.overlay.opaque=y
		plain     []string // must exist and be neither
		absent    []string
	}{
		{
			name:      "whiteouts become devices",
			entries:   []string{"a/", "a/.wh.gone", ".wh.top"},
			whiteouts: []string{"a/gone", "top"},
			plain:     []string{"a"},
			absent:    []string{"a/.wh.gone", ".wh.top"},
		},
		{
			name:    "opaque marker becomes an xattr",
			entries: []string{"d/", "d/.wh..wh..opq", "d/new"},
			opaque:  []string{"d"},
			plain:   []string{"d/new"},
			absent:  []string{"d/.wh..wh..opq"},
		},
		{
			name:    "opaque marker before its dir entry",
			entries: []string{"d/.wh..wh..opq", "d/", "d/new"},
			opaque:  []string{"d"},
		},
		{
			name:    "dir whited out and re-created is opaque",
			entries: []string{".wh.d", "d/", "d/new"},
			opaque:  []string{"d"},
			plain:   []string{"d/new"},
		},
		{
			name:    "file whited out and re-created stays a file",
			entries: []string{".wh.f", "f"},
			plain:   []string{"f"},
		},
		{
			name:      "whiteout in a dir the tar omits",
			entries:   []string{"x/y/.wh.z"},
			whiteouts: []string{"x/y/z"},
			plain:     []string{"x/y"},
		},
		{
			name:    "AUFS metadata skipped",
			entries: []string{".wh..wh.plnk/", ".wh..wh.aufs"},
			absent:  []string{".wh..wh.plnk", ".wh..wh.aufs", "plnk"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			must(t, ApplyOverlay(context.Background(), dir, tarOf(t, tt.entries...)))
			for _, w := range tt.whiteouts {
				if !isWhiteout(filepath.Join(dir, w)) {
					t.Errorf("%s is not an overlay whiteout", w)
				}
			}
			for _, o := range tt.opaque {
				if ok, err := isOpaque(filepath.Join(dir, o)); !ok || err != nil {
					t.Errorf("%s not opaque (%v)", o, err)
				}
			}
			for _, p := range tt.plain {
				full := filepath.Join(dir, p)
				if ok, _ := isOpaque(full); ok || isWhiteout(full) {
					t.Errorf("%s wrongly marked", p)
				}
				if _, err := os.Lstat(full); err != nil {
					t.Errorf("%s: %v", p, err)
				}
			}
			for _, p := range tt.absent {
				if _, err := os.Lstat(filepath.Join(dir, p)); err == nil {
					t.Errorf("%s exists", p)
				}
			}
		})
	}
}

// TestApplyOverlayRefusesOverlayXattrs: a layer cannot make a directory
// opaque or redirect it through its own xattrs.
func TestApplyOverlayRefusesOverlayXattrs(t *testing.T) {
	requireRoot(t)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	must(t, tw.WriteHeader(&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.trusted.overlay.redirect": "/etc"}}))
	must(t, tw.Close())
	dir := t.TempDir()
	must(t, ApplyOverlay(context.Background(), dir, &buf))
	if ok, _ := isOpaque(filepath.Join(dir, "d")); ok {
		t.Error("layer xattr made d opaque")
	}
	if _, err := unix.Lgetxattr(filepath.Join(dir, "d"), "trusted.overlay.redirect", make([]byte, 64)); err == nil {
		t.Error("layer xattr set a redirect")
	}
}

func TestApplyOverlayHostile(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name    string
		entries []string
	}{
		{"whiteout climbing out", []string{"../.wh.victim"}},
		{"opaque through a symlink", []string{"evil->/", "evil/.wh..wh..opq"}},
		{"whiteout through an absolute symlink", []string{"evil->/tmp", "evil/.wh.victim"}},
		{"hardlink to a lower layer's file", []string{"h=>etc/passwd"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outer := t.TempDir()
			dir := filepath.Join(outer, "layer")
			must(t, os.Mkdir(dir, 0o755))
			must(t, os.WriteFile(filepath.Join(outer, "victim"), []byte("safe"), 0o644))
			err := ApplyOverlay(context.Background(), dir, tarOf(t, tt.entries...))
			if err != nil && !errors.Is(err, ErrUnsafePath) && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("unexpected error class: %v", err)
			}
			if b, err := os.ReadFile(filepath.Join(outer, "victim")); err != nil || string(b) != "safe" {
				t.Errorf("outside file changed: %q %v", b, err)
			}
			if ok, _ := isOpaque("/"); ok {
				t.Error("host root made opaque")
			}
			if isWhiteout("/tmp/victim") {
				t.Error("whiteout written outside the layer")
			}
		})
	}
}

func TestCompare(t *testing.T) {
	dir := fileState{mode: unix.S_IFDIR | 0o755, ino: 1}
	file := fileState{mode: unix.S_IFREG | 0o644, ino: 2}
	changed := file
	changed.ctime = 99
	tests := []struct {
		name          string
		before, after map[string]fileState
		paths, del    []string
	}{
		{"unchanged", map[string]fileState{"f": file}, map[string]fileState{"f": file}, nil, nil},
		{"changed and new", map[string]fileState{"f": file}, map[string]fileState{"f": changed, "g": file}, []string{"f", "g"}, nil},
		{"deleted dir lists only the dir",
			map[string]fileState{"d": dir, "d/a": file, "d/b/c": file, "d/b": dir}, map[string]fileState{}, nil, []string{"d"}},
		{"dir replaced by a file",
			map[string]fileState{"d": dir, "d/a": file}, map[string]fileState{"d": file}, []string{"d"}, nil},
		{"file replaced by a dir",
			map[string]fileState{"f": file}, map[string]fileState{"f": dir, "f/x": file}, []string{"f", "f/x"}, nil},
		{"child deleted from a kept dir",
			map[string]fileState{"d": dir, "d/a": file}, map[string]fileState{"d": dir}, nil, []string{"d/a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch := compare(tt.before, tt.after)
			if !slices.Equal(ch.Paths, tt.paths) || !slices.Equal(ch.Deleted, tt.del) || len(ch.Opaque) != 0 {
				t.Errorf("compare = %+v, want paths %v deleted %v", ch, tt.paths, tt.del)
			}
		})
	}
}
