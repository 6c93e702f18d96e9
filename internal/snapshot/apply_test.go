package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// requireRoot skips tests that need root (chown, mknod) unless CI=true,
// where a missing privilege must fail the run.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("test needs root")
		}
		t.Skip("test needs root")
	}
}

var mtime = time.Date(2022, 2, 2, 2, 2, 2, 0, time.UTC)

// tarOf builds a tar stream; an entry is "name" (file with content = name),
// "name/" (dir), "name->target" (symlink) or "name=>target" (hardlink).
func tarOf(t *testing.T, entries ...string) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e, Mode: 0o644, ModTime: mtime, Typeflag: tar.TypeReg}
		var body []byte
		switch {
		case strings.Contains(e, "=>"):
			name, target, _ := strings.Cut(e, "=>")
			h.Name, h.Linkname, h.Typeflag = name, target, tar.TypeLink
		case strings.Contains(e, "->"):
			name, target, _ := strings.Cut(e, "->")
			h.Name, h.Linkname, h.Typeflag, h.Mode = name, target, tar.TypeSymlink, 0o777
		case strings.HasSuffix(e, "/"):
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		default:
			body = []byte(e)
			h.Size = int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf
}

// tree lists dir as sorted "path" / "path/" / "path->target" strings.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case fi.IsDir():
			rel += "/"
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			rel += "->" + target
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func TestApplyWhiteouts(t *testing.T) {
	requireRoot(t)
	lower := []string{"a/", "a/x", "a/y", "b/", "b/z", "b/sub/", "b/sub/deep", "c", "d/", "d/old", "keep"}
	tests := []struct {
		name  string
		upper []string
		want  []string
	}{
		{
			name:  "whiteout file and dir",
			upper: []string{".wh.c", "a/.wh.x", ".wh.d"},
			want:  []string{"a/", "a/y", "b/", "b/sub/", "b/sub/deep", "b/z", "keep"},
		},
		{
			name:  "opaque dir keeps only this layer's files",
			upper: []string{"b/", "b/.wh..wh..opq", "b/new"},
			want:  []string{"a/", "a/x", "a/y", "b/", "b/new", "c", "d/", "d/old", "keep"},
		},
		{
			name:  "opaque marker after the additions",
			upper: []string{"b/", "b/new", "b/sub/", "b/sub/fresh", "b/.wh..wh..opq"},
			want:  []string{"a/", "a/x", "a/y", "b/", "b/new", "b/sub/", "b/sub/fresh", "c", "d/", "d/old", "keep"},
		},
		{
			name:  "whiteout then re-create as another type",
			upper: []string{"d", ".wh.d", "c/", "c/inside", ".wh.c"},
			want:  []string{"a/", "a/x", "a/y", "b/", "b/sub/", "b/sub/deep", "b/z", "c/", "c/inside", "d", "keep"},
		},
		{
			name:  "deleted and re-created dir hides lower contents",
			upper: []string{".wh.d", "d/", "d/new"},
			want:  []string{"a/", "a/x", "a/y", "b/", "b/sub/", "b/sub/deep", "b/z", "c", "d/", "d/new", "keep"},
		},
		{
			name:  "whiteout of a missing name is harmless",
			upper: []string{"a/.wh.nothing", ".wh.ghost"},
			want:  lower,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx := context.Background()
			if err := Apply(ctx, dir, tarOf(t, lower...)); err != nil {
				t.Fatal(err)
			}
			if err := Apply(ctx, dir, tarOf(t, tt.upper...)); err != nil {
				t.Fatal(err)
			}
			want := append([]string(nil), tt.want...)
			sort.Strings(want)
			got := tree(t, dir)
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("tree after layers:\n got %v\nwant %v", got, want)
			}
		})
	}
}

func TestApplyHostile(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name    string
		entries []string
		unsafe  bool     // error must wrap ErrUnsafePath
		fails   bool     // some error is required
		want    []string // tree inside dir when it succeeds
	}{
		{name: "dotdot", entries: []string{"../evil"}, unsafe: true},
		{name: "dotdot in the middle", entries: []string{"a/../../evil"}, unsafe: true},
		{name: "absolute name made relative", entries: []string{"/abs/file"}, want: []string{"abs/", "abs/file"}},
		{name: "harmless dotdot", entries: []string{"a/../b"}, want: []string{"b"}},
		{name: "hardlink climbing out", entries: []string{"h=>../../etc/passwd"}, unsafe: true},
		{name: "hardlink to absolute host file stays inside", entries: []string{"h=>/etc/passwd"}, fails: true},
		{name: "hardlink to the root", entries: []string{"h=>/"}, unsafe: true},
		{name: "whiteout climbing out", entries: []string{"../.wh.victim"}, unsafe: true},
		{name: "whiteout of dotdot", entries: []string{".wh.."}, unsafe: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			outer := t.TempDir()
			dir := filepath.Join(outer, "root", "dir")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(outer, "root", "victim"), []byte("safe"), 0o644); err != nil {
				t.Fatal(err)
			}
			err := Apply(context.Background(), dir, tarOf(t, tt.entries...))
			switch {
			case tt.unsafe && !errors.Is(err, ErrUnsafePath):
				t.Fatalf("error = %v, want ErrUnsafePath", err)
			case tt.fails && err == nil:
				t.Fatal("hostile layer applied without error")
			case !tt.unsafe && !tt.fails && err != nil:
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(outer, "root", "victim")); err != nil || string(b) != "safe" {
				t.Errorf("file outside dir touched: %q, %v", b, err)
			}
			if got := tree(t, filepath.Join(outer, "root")); len(got) > 0 && tt.want == nil {
				for _, g := range got {
					if g != "dir/" && g != "victim" && !strings.HasPrefix(g, "dir/") {
						t.Errorf("created outside dir: %s", g)
					}
				}
			}
			if tt.want != nil {
				if got := tree(t, dir); strings.Join(got, " ") != strings.Join(tt.want, " ") {
					t.Errorf("tree %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// TestApplySymlinkEscapes covers symlinks planted by one entry (or a lower
// layer) and used by a later one to reach outside the directory.
func TestApplySymlinkEscapes(t *testing.T) {
	requireRoot(t)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	tests := []struct {
		name    string
		entries []string
		check   func(t *testing.T, dir string)
	}{
		{
			name:    "write through an absolute symlink dir",
			entries: []string{"evil->" + outside, "evil/victim"},
			check: func(t *testing.T, dir string) {
				// The symlink is resolved as if dir were the root.
				if _, err := os.Lstat(filepath.Join(dir, strings.TrimPrefix(outside, "/"), "victim")); err != nil {
					t.Errorf("entry not written inside dir: %v", err)
				}
			},
		},
		{
			name:    "write through a relative symlink climbing out",
			entries: []string{"evil->../../../../../../" + strings.TrimPrefix(outside, "/"), "evil/victim"},
		},
		{
			name:    "replace a symlink to an outside file",
			entries: []string{"f->" + victim, "f"},
			check: func(t *testing.T, dir string) {
				fi, err := os.Lstat(filepath.Join(dir, "f"))
				if err != nil || !fi.Mode().IsRegular() {
					t.Errorf("symlink not replaced by the file: %v %v", fi, err)
				}
			},
		},
		{
			name:    "hardlink through a symlink",
			entries: []string{"evil->" + outside, "h=>evil/victim"},
		},
		{
			name:    "whiteout through a symlink",
			entries: []string{"evil->" + outside, "evil/.wh.victim"},
		},
		{
			name:    "opaque through a symlink",
			entries: []string{"evil->" + outside, "evil/.wh..wh..opq"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(victim, []byte("safe"), 0o644); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			err := Apply(context.Background(), dir, tarOf(t, tt.entries...))
			if err != nil && !errors.Is(err, ErrUnsafePath) && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("unexpected error class: %v", err)
			}
			if b, err := os.ReadFile(victim); err != nil || string(b) != "safe" {
				t.Errorf("outside file changed: %q, %v", b, err)
			}
			if got := tree(t, outside); strings.Join(got, " ") != "victim" {
				t.Errorf("outside dir now holds %v", got)
			}
			var st unix.Stat_t
			if err := unix.Stat(victim, &st); err == nil && st.Nlink != 1 {
				t.Errorf("outside file gained a hardlink (nlink %d)", st.Nlink)
			}
			if tt.check != nil && err == nil {
				tt.check(t, dir)
			}
		})
	}
}
