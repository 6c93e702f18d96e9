package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

func layerOf(t *testing.T, buf *bytes.Buffer) v1.Layer {
	t.Helper()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestMaterialize(t *testing.T) {
	requireRoot(t)
	base := tarOf(t, "etc/", "etc/os-release", "bin/", "bin/sh", "usr/", "usr/share/", "usr/share/doc/", "usr/share/doc/a")
	app := tarOf(t, "app/", "app/main", "etc/.wh.os-release", "usr/share/doc/.wh..wh..opq", "bin/busybox=>bin/sh")
	fix := tarOf(t, "app/.wh.main", "app/main2", "etc/os-release")
	dir := filepath.Join(t.TempDir(), "new", "rootfs") // created by Materialize
	layers := []v1.Layer{layerOf(t, base), layerOf(t, app), layerOf(t, fix)}
	if err := Materialize(context.Background(), dir, layers); err != nil {
		t.Fatal(err)
	}
	want := "app/ app/main2 bin/ bin/busybox bin/sh etc/ etc/os-release usr/ usr/share/ usr/share/doc/"
	if got := strings.Join(tree(t, dir), " "); got != want {
		t.Errorf("merged tree\n got %s\nwant %s", got, want)
	}
	// The re-created file carries the top layer's content.
	if b, _ := os.ReadFile(filepath.Join(dir, "etc/os-release")); string(b) != "etc/os-release" {
		t.Errorf("etc/os-release = %q", b)
	}
}

func TestMaterializeBadLayer(t *testing.T) {
	requireRoot(t)
	bad := bytes.NewBufferString("this is not a tar stream, but it is long enough to fill a header block......." + strings.Repeat("x", 600))
	err := Materialize(context.Background(), t.TempDir(), []v1.Layer{layerOf(t, tarOf(t, "ok")), layerOf(t, bad)})
	if err == nil || !strings.Contains(err.Error(), "layer 1") {
		t.Fatalf("error = %v, want one naming layer 1", err)
	}
}

func TestApplyCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Apply(ctx, t.TempDir(), tarOf(t, "f")); !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
}

// TestApplyMetadata checks what `ls -l` and `stat` would show a user.
func TestApplyMetadata(t *testing.T) {
	requireRoot(t)
	dirTime := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	linkTime := time.Date(2002, 2, 2, 0, 0, 0, 123000000, time.UTC)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdrs := []*tar.Header{
		{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o2750, Uid: 10, Gid: 20, ModTime: dirTime},
		{Name: "d/suid", Typeflag: tar.TypeReg, Mode: 0o4711, Uid: 30, Gid: 40, ModTime: mtime, Size: 2},
		{Name: "d/link", Typeflag: tar.TypeSymlink, Linkname: "suid", Uid: 50, Gid: 60, ModTime: linkTime, Format: tar.FormatPAX},
		{Name: "d/fifo", Typeflag: tar.TypeFifo, Mode: 0o640, ModTime: mtime},
		{Name: "d/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mtime},
		{Name: "d/blk", Typeflag: tar.TypeBlock, Mode: 0o600, Devmajor: 7, Devminor: 0, ModTime: mtime},
		{Name: "t/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: dirTime},
		{Name: "t/x", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: mtime, Size: 2,
			PAXRecords: map[string]string{"SCHILY.xattr.user.kiln": "yes"}},
	}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("hi"))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := Apply(context.Background(), dir, &buf); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		typ      uint32
		perm     uint32
		uid, gid uint32
		mtime    time.Time
		rdev     uint64
	}{
		{"d", unix.S_IFDIR, 0o2750, 10, 20, dirTime, 0},
		{"d/suid", unix.S_IFREG, 0o4711, 30, 40, mtime, 0},
		{"d/link", unix.S_IFLNK, 0o777, 50, 60, linkTime, 0},
		{"d/fifo", unix.S_IFIFO, 0o640, 0, 0, mtime, 0},
		{"d/null", unix.S_IFCHR, 0o666, 0, 0, mtime, unix.Mkdev(1, 3)},
		{"d/blk", unix.S_IFBLK, 0o600, 0, 0, mtime, unix.Mkdev(7, 0)},
		{"t", unix.S_IFDIR, 0o1777, 0, 0, dirTime, 0},
	}
	for _, tt := range tests {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, tt.name), &st); err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if st.Mode&unix.S_IFMT != tt.typ || st.Mode&0o7777 != tt.perm {
			t.Errorf("%s: mode %o, want type %o perm %o", tt.name, st.Mode, tt.typ, tt.perm)
		}
		if st.Uid != tt.uid || st.Gid != tt.gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", tt.name, st.Uid, st.Gid, tt.uid, tt.gid)
		}
		if got := time.Unix(st.Mtim.Unix()).UTC(); !got.Equal(tt.mtime) {
			t.Errorf("%s: mtime %v, want %v", tt.name, got, tt.mtime)
		}
		if tt.rdev != 0 && uint64(st.Rdev) != tt.rdev {
			t.Errorf("%s: rdev %d, want %d", tt.name, st.Rdev, tt.rdev)
		}
	}
	// xattrs are best effort: only check when the filesystem has them.
	b := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(dir, "t/x"), "user.kiln", b); err == nil {
		if string(b[:n]) != "yes" {
			t.Errorf("xattr user.kiln = %q", b[:n])
		}
	} else if !errors.Is(err, syscall.ENOTSUP) {
		t.Errorf("xattr user.kiln: %v", err)
	}
}
