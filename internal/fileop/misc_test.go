package fileop

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestWriteFiles(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name    string
		rootfs  map[string]spec
		dest    string
		files   []File
		chown   *Owner
		chmod   *Chmod
		want    map[string]*got
		changed []string
		wantErr error
	}{
		{name: "single file to path", dest: "/app/run.sh", files: []File{{"run.sh", []byte("echo")}},
			want: map[string]*got{"app/run.sh": {data: "echo", mode: 0o644}}, changed: []string{"app", "app/run.sh"}},
		{name: "into dir with slash", dest: "/app/", files: []File{{"a", []byte("1")}, {"b", []byte("2")}},
			want: map[string]*got{"app/a": {data: "1", mode: 0o644}, "app/b": {data: "2", mode: 0o644}}},
		{name: "into existing dir", rootfs: map[string]spec{"app": {dir: true}}, dest: "/app", files: []File{{"a", []byte("1")}},
			want: map[string]*got{"app/a": {data: "1", mode: 0o644}}},
		{name: "chmod and chown", dest: "/bin/", files: []File{{"x", []byte("#!/bin/sh")}}, chmod: fmode(0o755), chown: &Owner{UID: 1, GID: 2},
			want: map[string]*got{"bin": {dir: true, mode: 0o755, uid: 1, gid: 2}, "bin/x": {data: "#!/bin/sh", mode: 0o755, uid: 1, gid: 2}}},
		{name: "symbolic chmod applies to the heredoc's 0644", dest: "/bin/", files: []File{{"x", []byte("#!/bin/sh")}}, chmod: symMode(t, "u+x,o-r"),
			want: map[string]*got{"bin/x": {data: "#!/bin/sh", mode: 0o740}}},
		{name: "several files need a dir", dest: "/f", files: []File{{"a", nil}, {"b", nil}}, wantErr: ErrDestNotDir},
		{name: "name cannot climb", dest: "/d/", files: []File{{"../../x", nil}}, wantErr: ErrOutsideContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rootfs := t.TempDir()
			mkTree(t, rootfs, tt.rootfs)
			changed, err := WriteFiles(context.Background(), rootfs, tt.dest, tt.files, tt.chown, tt.chmod)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			expectTree(t, rootfs, tt.want)
			if tt.changed != nil && !reflect.DeepEqual(changed, tt.changed) {
				t.Errorf("changed = %q, want %q", changed, tt.changed)
			}
		})
	}
}

func TestMkdir(t *testing.T) {
	requireRoot(t)
	rootfs := t.TempDir()
	mkTree(t, rootfs, map[string]spec{"usr/lib": {dir: true, mode: 0o700}, "lib": {link: "usr/lib"}})
	tests := []struct {
		name    string
		dir     string
		owner   *Owner
		changed []string
		want    map[string]*got
	}{
		{"creates parents", "/a/b/c", &Owner{UID: 5, GID: 6}, []string{"a", "a/b", "a/b/c"}, map[string]*got{"a/b/c": {dir: true, mode: 0o755, uid: 5, gid: 6}}},
		{"existing is a no-op", "/a/b", nil, []string{}, map[string]*got{"a/b": {dir: true, mode: 0o755, uid: 5, gid: 6}}},
		{"existing dir keeps its mode", "/usr/lib", nil, []string{}, map[string]*got{"usr/lib": {dir: true, mode: 0o700}}},
		{"through symlink", "/lib/app", nil, []string{"usr/lib/app"}, map[string]*got{"usr/lib/app": {dir: true, mode: 0o755}}},
		{"dot-dot stays in rootfs", "/../../w", nil, []string{"w"}, map[string]*got{"w": {dir: true, mode: 0o755}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			changed, err := Mkdir(context.Background(), rootfs, tt.dir, tt.owner)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(changed, tt.changed) {
				t.Errorf("changed = %q, want %q", changed, tt.changed)
			}
			expectTree(t, rootfs, tt.want)
		})
	}
	mkTree(t, rootfs, map[string]spec{"file": {data: "x"}})
	if _, err := Mkdir(context.Background(), rootfs, "/file/sub", nil); err == nil {
		t.Error("mkdir under a file: want error")
	}
}

func TestResolveOwner(t *testing.T) {
	rootfs := t.TempDir()
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(rootfs, "etc", name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("passwd", "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1050:App:/home/app:/bin/sh\n")
	write("group", "root:x:0:\nstaff:x:50:app\n")
	empty := t.TempDir()
	tests := []struct {
		root, spec string
		want       Owner
		errHas     string
	}{
		{rootfs, "1000", Owner{1000, 1000}, ""},
		{rootfs, "1000:50", Owner{1000, 50}, ""},
		{rootfs, "app", Owner{1000, 1050}, ""},
		{rootfs, "app:staff", Owner{1000, 50}, ""},
		{rootfs, "app:50", Owner{1000, 50}, ""},
		{rootfs, "1000:staff", Owner{1000, 50}, ""},
		{rootfs, "root", Owner{0, 0}, ""},
		{empty, "123:456", Owner{123, 456}, ""},
		{rootfs, "nobody", Owner{}, `"nobody"`},
		{rootfs, "app:wheel", Owner{}, `"wheel"`},
		{empty, "app", Owner{}, "/etc/passwd"},
		{rootfs, "", Owner{}, "invalid"},
		{rootfs, "app:", Owner{}, "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := ResolveOwner(tt.root, tt.spec)
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err = %v, want mention of %s", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("ResolveOwner(%q) = %+v, want %+v", tt.spec, got, tt.want)
			}
		})
	}
	if _, err := ResolveOwner(rootfs, "ghost"); !errors.Is(err, ErrUnknownOwner) {
		t.Errorf("unknown user err = %v, want ErrUnknownOwner", err)
	}
}

func TestParseChmod(t *testing.T) {
	for _, bad := range []string{"999", "07778", "10000", "u+q", "x="} {
		if _, err := ParseChmod(bad); err == nil || !strings.Contains(err.Error(), "invalid chmod parameter") {
			t.Errorf("ParseChmod(%q) = %v, want an invalid chmod parameter error", bad, err)
		}
	}
	if c, err := ParseChmod("0750"); err != nil || c.apply(fs.ModeDir|0o777) != fs.ModeDir|0o750 {
		t.Errorf("ParseChmod(0750) = %v, %v", c, err)
	}
	if c, err := ParseChmod(""); c != nil || err != nil {
		t.Errorf("ParseChmod(\"\") = %v, %v, want none", c, err)
	}
}
