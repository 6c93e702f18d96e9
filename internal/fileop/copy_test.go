package fileop

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/buildctx"
)

func TestCopy(t *testing.T) {
	requireRoot(t)
	owned := spec{data: "owned", uid: 1000, gid: 1001}
	ctxTree := map[string]spec{
		"a.txt":             {data: "A"},
		"b.txt":             {data: "B"},
		"owned.txt":         owned,
		"suid":              {data: "S", mode: 0o4755},
		"src":               {dir: true, mode: 0o750},
		"src/f":             {data: "F", mode: 0o600},
		"src/sub":           {dir: true},
		"src/sub/g":         {data: "G"},
		"src/link":          {link: "f"},
		"src/abs":           {link: "/etc/passwd"},
		"src/x.log":         {data: "log"},
		"ln-to-a":           {link: "a.txt"},
		"ln-to-src":         {link: "src"},
		"ln-out":            {link: "../../../../outside"},
		"ln-abs":            {link: "/etc/hostname"},
		"dir/nested/c.txt":  {data: "C"},
		"dir/nested/d.json": {data: "D"},
	}
	tests := []struct {
		name    string
		rootfs  map[string]spec
		op      Copy
		want    map[string]*got
		changed []string
		wantErr error
		errText string
	}{
		{
			name:    "file renamed to dest",
			op:      Copy{Sources: []string{"a.txt"}, Dest: "/app/x.txt"},
			want:    map[string]*got{"app/x.txt": {data: "A", mode: 0o644}, "app": {dir: true, mode: 0o755}, "app/a.txt": nil},
			changed: []string{"app", "app/x.txt"},
		},
		{
			name: "file into dest ending with slash",
			op:   Copy{Sources: []string{"a.txt"}, Dest: "/app/"},
			want: map[string]*got{"app/a.txt": {data: "A", mode: 0o644}},
		},
		{
			name:   "file into existing dir without slash",
			rootfs: map[string]spec{"app": {dir: true}},
			op:     Copy{Sources: []string{"a.txt"}, Dest: "/app"},
			want:   map[string]*got{"app/a.txt": {data: "A", mode: 0o644}},
		},
		{
			name: "dir copies its contents, keeps mode, symlinks stay symlinks",
			op:   Copy{Sources: []string{"src"}, Dest: "/dst"},
			want: map[string]*got{
				// The destination is made like mkdir -p, not from src's metadata.
				"dst":       {dir: true, mode: 0o755},
				"dst/src":   nil,
				"dst/f":     {data: "F", mode: 0o600},
				"dst/sub/g": {data: "G", mode: 0o644},
				"dst/link":  {link: "f"},
				"dst/abs":   {link: "/etc/passwd"},
			},
			changed: []string{"dst", "dst/abs", "dst/f", "dst/link", "dst/sub", "dst/sub/g", "dst/x.log"},
		},
		{
			name: "context owner reset to 0:0",
			op:   Copy{Sources: []string{"owned.txt"}, Dest: "/o"},
			want: map[string]*got{"o": {data: "owned", mode: 0o644}},
		},
		{
			name: "chown applies to files and created parents",
			op:   Copy{Sources: []string{"src"}, Dest: "/p/q/", Chown: &Owner{UID: 7, GID: 8}},
			want: map[string]*got{"p": {dir: true, mode: 0o755, uid: 7, gid: 8}, "p/q": {dir: true, mode: 0o755, uid: 7, gid: 8}, "p/q/f": {data: "F", mode: 0o600, uid: 7, gid: 8}},
		},
		{
			name: "chmod applies to copied files and dirs, not created parents or the destination",
			op:   Copy{Sources: []string{"src"}, Dest: "/p/q", Chmod: fmode(0o4711)},
			want: map[string]*got{"p": {dir: true, mode: 0o755}, "p/q": {dir: true, mode: 0o755}, "p/q/sub": {dir: true, mode: 0o4711}, "p/q/f": {data: "F", mode: 0o4711}, "p/q/link": {link: "f"}},
		},
		{
			// As chmod(1) and BuildKit: each object's own mode changed.
			name: "symbolic chmod changes each copied object's own mode",
			op:   Copy{Sources: []string{"src"}, Dest: "/s", Chmod: symMode(t, "go-rwx,u+x")},
			want: map[string]*got{"s": {dir: true, mode: 0o755}, "s/f": {data: "F", mode: 0o700}, "s/sub": {dir: true, mode: 0o700}, "s/sub/g": {data: "G", mode: 0o700}, "s/link": {link: "f"}},
		},
		{
			name: "symbolic X sets execute on directories and on what was executable",
			op:   Copy{Sources: []string{"src", "suid"}, Dest: "/x/", Chmod: symMode(t, "a=r,a+X")},
			want: map[string]*got{"x/f": {data: "F", mode: 0o444}, "x/sub": {dir: true, mode: 0o555}, "x/sub/g": {data: "G", mode: 0o444}, "x/suid": {data: "S", mode: 0o555}},
		},
		{
			name: "setuid preserved",
			op:   Copy{Sources: []string{"suid"}, Dest: "/bin/"},
			want: map[string]*got{"bin/suid": {data: "S", mode: 0o4755}},
		},
		{
			name: "source symlink is followed",
			op:   Copy{Sources: []string{"ln-to-a"}, Dest: "/d/"},
			want: map[string]*got{"d/ln-to-a": {data: "A", mode: 0o644}},
		},
		{
			name: "source symlink to dir copies the dir's contents",
			op:   Copy{Sources: []string{"ln-to-src"}, Dest: "/d"},
			want: map[string]*got{"d/f": {data: "F", mode: 0o600}},
		},
		{
			name: "glob with leading slash, several matches into dir",
			op:   Copy{Sources: []string{"/*.txt"}, Dest: "/g/"},
			want: map[string]*got{"g/a.txt": {data: "A", mode: 0o644}, "g/b.txt": {data: "B", mode: 0o644}, "g/owned.txt": {data: "owned", mode: 0o644}},
		},
		{
			name: "glob through directories",
			op:   Copy{Sources: []string{"dir/*/*.txt"}, Dest: "/g/"},
			want: map[string]*got{"g/c.txt": {data: "C", mode: 0o644}, "g/d.json": nil},
		},
		{
			name:    "several sources need trailing slash",
			op:      Copy{Sources: []string{"a.txt", "b.txt"}, Dest: "/g"},
			wantErr: ErrDestNotDir,
		},
		{
			name:    "glob with several matches needs trailing slash",
			op:      Copy{Sources: []string{"*.txt"}, Dest: "/g"},
			wantErr: ErrDestNotDir,
		},
		{
			name: "glob with one match renames",
			op:   Copy{Sources: []string{"a.t?t"}, Dest: "/g"},
			want: map[string]*got{"g": {data: "A", mode: 0o644}},
		},
		{
			name: "glob matching nothing copies nothing",
			op:   Copy{Sources: []string{"*.nope"}, Dest: "/g/"},
			want: map[string]*got{"g": nil},
		},
		{
			name:    "missing source",
			op:      Copy{Sources: []string{"nope"}, Dest: "/g/"},
			wantErr: ErrNotFound,
		},
		{
			name: "overwrite file, merge dir",
			rootfs: map[string]spec{
				"dst":       {dir: true},
				"dst/f":     {data: "old"},
				"dst/keep":  {data: "kept"},
				"dst/link":  {data: "was a file"},
				"dst/sub/h": {data: "H"},
			},
			op: Copy{Sources: []string{"src"}, Dest: "/dst"},
			want: map[string]*got{
				"dst/f":     {data: "F", mode: 0o600},
				"dst/keep":  {data: "kept", mode: 0o644},
				"dst/link":  {link: "f"},
				"dst/sub/h": {data: "H", mode: 0o644},
				"dst/sub/g": {data: "G", mode: 0o644},
			},
		},
		{
			name:    "copying a file over a directory fails",
			rootfs:  map[string]spec{"d/a.txt": {dir: true}},
			op:      Copy{Sources: []string{"a.txt"}, Dest: "/d/"},
			errText: "cannot overwrite directory",
		},
		{
			name:   "destination symlink in rootfs is followed inside rootfs",
			rootfs: map[string]spec{"usr/lib": {dir: true}, "lib": {link: "/usr/lib"}},
			op:     Copy{Sources: []string{"a.txt"}, Dest: "/lib/"},
			want:   map[string]*got{"usr/lib/a.txt": {data: "A", mode: 0o644}, "lib": {link: "/usr/lib"}},
		},
		{
			name:   "destination symlink escaping the rootfs stays inside",
			rootfs: map[string]spec{"evil": {link: "../../../../../../tmp/kiln-evil"}},
			op:     Copy{Sources: []string{"a.txt"}, Dest: "/evil/"},
			want:   map[string]*got{"tmp/kiln-evil/a.txt": {data: "A", mode: 0o644}},
		},
		{
			name:    "dot-dot source refused",
			op:      Copy{Sources: []string{"../x"}, Dest: "/"},
			wantErr: ErrOutsideContext,
		},
		{
			name:    "dot-dot inside source refused",
			op:      Copy{Sources: []string{"src/../../x"}, Dest: "/"},
			wantErr: ErrOutsideContext,
		},
		{
			name:    "relative symlink out of the context refused",
			op:      Copy{Sources: []string{"ln-out"}, Dest: "/"},
			wantErr: ErrOutsideContext,
		},
		{
			name:    "absolute symlink is scoped to the context, never the host",
			op:      Copy{Sources: []string{"ln-abs"}, Dest: "/x"},
			wantErr: ErrNotFound,
		},
		{
			name: "exclude flag",
			op:   Copy{Sources: []string{"src"}, Dest: "/e", Exclude: []string{"*.log", "sub"}},
			want: map[string]*got{"e/f": {data: "F", mode: 0o600}, "e/x.log": nil, "e/sub": nil},
		},
		{
			name: "copy whole context to root",
			op:   Copy{Sources: []string{"."}, Dest: "/"},
			want: map[string]*got{"a.txt": {data: "A", mode: 0o644}, "dir/nested/c.txt": {data: "C", mode: 0o644}, "ln-out": {link: "../../../../outside"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctxDir, rootfs := t.TempDir(), t.TempDir()
			mkTree(t, ctxDir, ctxTree)
			mkTree(t, rootfs, tt.rootfs)
			tt.op.Src = Tree{Root: ctxDir, ResetOwner: true}
			changed, err := tt.op.Apply(context.Background(), rootfs)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			case tt.errText != "":
				if err == nil || !strings.Contains(err.Error(), tt.errText) {
					t.Fatalf("err = %v, want %q", err, tt.errText)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			expectTree(t, rootfs, tt.want)
			if tt.changed != nil && !reflect.DeepEqual(changed, tt.changed) {
				t.Errorf("changed = %q, want %q", changed, tt.changed)
			}
		})
	}
	if _, err := os.Lstat("/tmp/kiln-evil"); err == nil {
		t.Error("copy escaped the rootfs into /tmp/kiln-evil")
	}
}

func TestCopyKeepsOwnerAndTimesFromStage(t *testing.T) {
	requireRoot(t)
	stage, rootfs := t.TempDir(), t.TempDir()
	mkTree(t, stage, map[string]spec{
		"opt/app":     {dir: true, uid: 33, gid: 34},
		"opt/app/bin": {data: "bin", mode: 0o755, uid: 1000, gid: 1001},
		"opt/app/ln":  {link: "bin"},
	})
	op := Copy{Src: Tree{Root: stage}, Sources: []string{"/opt/app"}, Dest: "/opt/app"}
	if _, err := op.Apply(context.Background(), rootfs); err != nil {
		t.Fatal(err)
	}
	expectTree(t, rootfs, map[string]*got{
		"opt": {dir: true, mode: 0o755},
		// The destination directory is created as by mkdir -p (BuildKit,
		// checked against docker build): root-owned, whatever the source.
		"opt/app":     {dir: true, mode: 0o755},
		"opt/app/bin": {data: "bin", mode: 0o755, uid: 1000, gid: 1001},
	})
	for _, p := range []string{"opt/app/bin"} {
		if got := mtime(t, rootfs, p); !got.Equal(epoch) {
			t.Errorf("%s mtime = %v, want %v", p, got, epoch)
		}
	}
}

func TestCopyDockerignore(t *testing.T) {
	requireRoot(t)
	ctxDir := t.TempDir()
	mkTree(t, ctxDir, map[string]spec{
		".dockerignore":    {data: "*.secret\ndocs\n!docs/keep.md\nnode_modules\n"},
		"app.go":           {data: "go"},
		"key.secret":       {data: "s"},
		"docs/keep.md":     {data: "keep"},
		"docs/drop.md":     {data: "drop"},
		"node_modules/x/y": {data: "y"},
		"ln-to-secret":     {link: "key.secret"},
		"sub/other.secret": {data: "not top-level, kept"},
	})
	bc, err := buildctx.Open(ctxDir, filepath.Join(ctxDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	tree := Tree{Root: ctxDir, Exclude: bc.Excluded, ResetOwner: true}
	tests := []struct {
		name    string
		sources []string
		want    map[string]*got
		wantErr error
	}{
		{"whole context", []string{"."}, map[string]*got{
			"out/app.go":           {data: "go", mode: 0o644},
			"out/key.secret":       nil,
			"out/docs/keep.md":     {data: "keep", mode: 0o644},
			"out/docs/drop.md":     nil,
			"out/node_modules":     nil,
			"out/sub/other.secret": {data: "not top-level, kept", mode: 0o644},
		}, nil},
		{"excluded file named", []string{"key.secret"}, nil, ErrNotFound},
		{"excluded dir named", []string{"node_modules"}, nil, ErrNotFound},
		{"glob does not match excluded", []string{"*.secret"}, map[string]*got{"out/key.secret": nil}, nil},
		{"symlink to excluded file", []string{"ln-to-secret"}, nil, ErrNotFound},
		{"re-included file named", []string{"docs/keep.md"}, map[string]*got{"out/keep.md": {data: "keep", mode: 0o644}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rootfs := t.TempDir()
			_, err := Copy{Src: tree, Sources: tt.sources, Dest: "/out/"}.Apply(context.Background(), rootfs)
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
		})
	}
}

func TestCopyCancelled(t *testing.T) {
	ctxDir, rootfs := t.TempDir(), t.TempDir()
	mkTree(t, ctxDir, map[string]spec{"a": {data: "a"}})
	cctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Copy{Src: Tree{Root: ctxDir}, Sources: []string{"a"}, Dest: "/"}.Apply(cctx, rootfs)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// A destination inside the source (kiln's state dir inside the context, a
// stage copying onto itself) must not be read while it is written: the copy
// takes what the source held when it started, each file once.
func TestCopyListsSourceBeforeWriting(t *testing.T) {
	src := t.TempDir()
	mkTree(t, src, map[string]spec{
		"a.txt":     {data: "A"},
		"d/b.txt":   {data: "B"},
		"out":       {dir: true},
		"z/deep/c":  {data: "C"},
		"z/deep/c2": {data: "C2"},
	})
	rootfs := filepath.Join(src, "out")
	op := Copy{Src: Tree{Root: src}, Sources: []string{"."}, Dest: "/x/"}
	if _, err := op.Apply(context.Background(), rootfs); err != nil {
		t.Fatalf("copy into a directory inside the source: %v", err)
	}
	var files []string
	err := filepath.WalkDir(filepath.Join(rootfs, "x"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(rootfs, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"x/a.txt", "x/d/b.txt", "x/z/deep/c", "x/z/deep/c2"}
	if !reflect.DeepEqual(files, want) {
		t.Fatalf("copied %d files %v, want each source file once: %v", len(files), files, want)
	}
}

// Files hard-linked to each other in the source stay linked when one COPY
// copies both, as BuildKit keeps them; a name outside what is copied does
// not pull its link along.
func TestCopyKeepsHardLinks(t *testing.T) {
	src, rootfs := t.TempDir(), t.TempDir()
	for _, d := range []string{"d/sub", "other"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "d/a"), []byte("A"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"d/sub/b", "other/c"} {
		if err := os.Link(filepath.Join(src, "d/a"), filepath.Join(src, l)); err != nil {
			t.Fatal(err)
		}
	}
	op := Copy{Src: Tree{Root: src}, Sources: []string{"d"}, Dest: "/x", Chmod: fmode(0o600)}
	if _, err := op.Apply(context.Background(), rootfs); err != nil {
		t.Fatal(err)
	}
	ino := func(p string) (uint64, uint64) {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(rootfs, p), &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino, uint64(st.Nlink)
	}
	a, an := ino("x/a")
	b, _ := ino("x/sub/b")
	if a != b || an != 2 {
		t.Errorf("x/a (inode %d, %d links) and x/sub/b (inode %d) are not one file of two names", a, an, b)
	}
	expectTree(t, rootfs, map[string]*got{"x/a": {data: "A", mode: 0o600}, "x/sub/b": {data: "A", mode: 0o600}})
	// A second copy of the same sources links among its own files only.
	op = Copy{Src: Tree{Root: src}, Sources: []string{"other"}, Dest: "/y"}
	if _, err := op.Apply(context.Background(), rootfs); err != nil {
		t.Fatal(err)
	}
	if c, cn := ino("y/c"); c == a || cn != 1 {
		t.Errorf("y/c: inode %d with %d links, want a file of its own", c, cn)
	}
}

// COPY --parents keeps each source's path (below a "/./" pivot when
// there is one), its parent directories made with their own metadata, as
// BuildKit's include-pattern copy does.
func TestCopyParents(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	mkTree(t, src, map[string]spec{
		"a":         {dir: true, mode: 0o750},
		"a/b":       {dir: true, mode: 0o700},
		"a/b/c.txt": {data: "C"},
		"x":         {dir: true},
		"x/y.txt":   {data: "Y"},
		"z":         {dir: true},
		"z/y.txt":   {data: "Z"},
		"p":         {dir: true, mode: 0o711},
		"p/q":       {dir: true, mode: 0o751},
		"p/q/r.txt": {data: "R", mode: 0o600},
	})
	tests := []struct {
		name    string
		sources []string
		want    map[string]*got
	}{
		{"files keep their paths", []string{"a/b/c.txt", "x/y.txt"}, map[string]*got{
			"d": {dir: true, mode: 0o755}, "d/a": {dir: true, mode: 0o750}, "d/a/b": {dir: true, mode: 0o700},
			"d/a/b/c.txt": {data: "C", mode: 0o644}, "d/x/y.txt": {data: "Y", mode: 0o644}, "d/z": nil,
		}},
		{"a glob keeps each match's path", []string{"*/y.txt"}, map[string]*got{
			"d/x/y.txt": {data: "Y", mode: 0o644}, "d/z/y.txt": {data: "Z", mode: 0o644}, "d/a": nil,
		}},
		{"a pivot drops what is above it", []string{"p/./q/r.txt"}, map[string]*got{
			"d/q": {dir: true, mode: 0o751}, "d/q/r.txt": {data: "R", mode: 0o600}, "d/p": nil,
		}},
		{"a directory is copied whole, itself included", []string{"a"}, map[string]*got{
			"d/a": {dir: true, mode: 0o750}, "d/a/b": {dir: true, mode: 0o700}, "d/a/b/c.txt": {data: "C", mode: 0o644}, "d/b": nil,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rootfs := t.TempDir()
			op := Copy{Src: Tree{Root: src, ResetOwner: true}, Sources: tt.sources, Dest: "/d", Parents: true}
			if _, err := op.Apply(context.Background(), rootfs); err != nil {
				t.Fatal(err)
			}
			expectTree(t, rootfs, tt.want)
		})
	}
}

// A --parents source whose path climbs out of its pivot, or out of the
// tree, is refused; nothing is written outside the destination.
func TestCopyParentsHostile(t *testing.T) {
	requireRoot(t)
	outer := t.TempDir()
	src := filepath.Join(outer, "ctx")
	mkTree(t, src, map[string]spec{"a/f": {data: "F"}, "x/g": {data: "G"}, "up": {link: "../"}})
	if err := os.WriteFile(filepath.Join(outer, "secret"), []byte("S"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"a/./../x/g", "../secret", "a/./../../secret", "up/secret"} {
		rootfs := t.TempDir()
		op := Copy{Src: Tree{Root: src, ResetOwner: true}, Sources: []string{s}, Dest: "/d", Parents: true}
		_, err := op.Apply(context.Background(), rootfs)
		if err == nil {
			t.Errorf("COPY --parents %s: no error", s)
		}
		if b, rerr := os.ReadFile(filepath.Join(rootfs, "d", "secret")); rerr == nil {
			t.Errorf("COPY --parents %s copied a file from outside the context: %q", s, b)
		}
	}
}
