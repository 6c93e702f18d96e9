package image

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"golang.org/x/sys/unix"
)

func TestParseCompression(t *testing.T) {
	tests := []struct {
		in      string
		want    Compression
		wantErr bool
	}{
		{"", Gzip, false},
		{"gzip", Gzip, false},
		{"ZSTD", Zstd, false},
		{" uncompressed ", Uncompressed, false},
		{"estargz", "", true},
		{"xz", "", true},
	}
	for _, tt := range tests {
		got, err := ParseCompression(tt.in)
		if tt.wantErr {
			if !errors.Is(err, ErrUnknownCompression) {
				t.Errorf("ParseCompression(%q) error = %v, want ErrUnknownCompression", tt.in, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseCompression(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

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

var (
	old   = time.Date(2020, 1, 2, 3, 4, 5, 600, time.UTC)
	epoch = time.Date(2021, 6, 1, 0, 0, 0, 0, time.UTC)
)

// fixture builds a tree with every kind of entry a layer can hold and
// returns its root and the changes that list it.
func fixture(t *testing.T) (string, Changes) {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "usr/local/bin"), 0o755))
	must(os.WriteFile(filepath.Join(root, "usr/local/bin/tool"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.Lchown(filepath.Join(root, "usr/local/bin/tool"), 1000, 1001))
	must(unix.Chmod(filepath.Join(root, "usr/local/bin/tool"), 0o4755))
	must(os.Mkdir(filepath.Join(root, "tmp"), 0o755))
	must(unix.Chmod(filepath.Join(root, "tmp"), 0o1777))
	must(os.Mkdir(filepath.Join(root, "shared"), 0o755))
	must(unix.Chmod(filepath.Join(root, "shared"), 0o2775))
	must(os.Symlink("usr/local/bin/tool", filepath.Join(root, "link")))
	must(os.Lchown(filepath.Join(root, "link"), 7, 8))
	must(os.Link(filepath.Join(root, "usr/local/bin/tool"), filepath.Join(root, "usr/local/bin/tool2")))
	must(unix.Mkfifo(filepath.Join(root, "tmp/fifo"), 0o600))
	must(unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Chmod(filepath.Join(root, "null"), 0o666))
	must(os.WriteFile(filepath.Join(root, "new.txt"), []byte("new"), 0o640))
	for _, p := range []string{"usr/local/bin/tool", "usr/local/bin/tool2", "usr/local/bin", "usr/local", "usr", "tmp/fifo", "tmp", "shared", "null", "new.txt"} {
		must(os.Chtimes(filepath.Join(root, p), old, old))
	}
	must(unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(root, "link"),
		[]unix.Timespec{unix.NsecToTimespec(old.UnixNano()), unix.NsecToTimespec(old.UnixNano())}, unix.AT_SYMLINK_NOFOLLOW))
	return root, Changes{
		Paths:   []string{"usr/local/bin/tool", "usr/local/bin/tool2", "tmp/fifo", "shared", "link", "null", "/new.txt"},
		Deleted: []string{"usr/local/bin/gone", "etc"},
		Opaque:  []string{"shared"},
	}
}

type entry struct {
	name, link string
	typ        byte
	mode       int64
	uid, gid   int
	mtime      time.Time
}

func readTar(t *testing.T, r io.Reader) []entry {
	t.Helper()
	var out []entry
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uname != "" || h.Gname != "" || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
			t.Errorf("%s: host-dependent fields uname=%q gname=%q atime=%v ctime=%v", h.Name, h.Uname, h.Gname, h.AccessTime, h.ChangeTime)
		}
		out = append(out, entry{h.Name, h.Linkname, h.Typeflag, h.Mode, h.Uid, h.Gid, h.ModTime.UTC()})
	}
}

func TestWriteLayerEntries(t *testing.T) {
	requireRoot(t)
	root, ch := fixture(t)
	l, err := WriteLayer(context.Background(), root, ch, LayerOptions{Compression: Uncompressed, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := readTar(t, rc)
	o := old.Truncate(time.Second)
	z := time.Unix(0, 0).UTC()
	want := []entry{
		{name: ".wh.etc", typ: tar.TypeReg, mode: 0, mtime: z},
		{name: "link", link: "usr/local/bin/tool", typ: tar.TypeSymlink, mode: 0o777, uid: 7, gid: 8, mtime: o},
		{name: "new.txt", typ: tar.TypeReg, mode: 0o640, mtime: o},
		{name: "null", typ: tar.TypeChar, mode: 0o666, mtime: o},
		{name: "shared/", typ: tar.TypeDir, mode: 0o2775, mtime: o},
		{name: "shared/.wh..wh..opq", typ: tar.TypeReg, mtime: z},
		{name: "tmp/", typ: tar.TypeDir, mode: 0o1777, mtime: o},
		{name: "tmp/fifo", typ: tar.TypeFifo, mode: 0o600, mtime: o},
		{name: "usr/", typ: tar.TypeDir, mode: 0o755, mtime: o},
		{name: "usr/local/", typ: tar.TypeDir, mode: 0o755, mtime: o},
		{name: "usr/local/bin/", typ: tar.TypeDir, mode: 0o755, mtime: o},
		{name: "usr/local/bin/.wh.gone", typ: tar.TypeReg, mtime: z},
		{name: "usr/local/bin/tool", typ: tar.TypeReg, mode: 0o4755, uid: 1000, gid: 1001, mtime: o},
		{name: "usr/local/bin/tool2", link: "usr/local/bin/tool", typ: tar.TypeLink, mode: 0o4755, uid: 1000, gid: 1001, mtime: o},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d:\n%+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	if l.Empty() {
		t.Error("Empty() = true for a layer with entries")
	}
}

func TestWriteLayerRefusesEscapes(t *testing.T) {
	for _, ch := range []Changes{
		{Paths: []string{"../outside"}},
		{Deleted: []string{"a/../../b"}},
		{Opaque: []string{".."}},
		{Deleted: []string{"/"}},
	} {
		_, err := WriteLayer(context.Background(), t.TempDir(), ch, LayerOptions{Dir: t.TempDir()})
		if !errors.Is(err, ErrUnsafePath) {
			t.Errorf("WriteLayer(%+v) error = %v, want ErrUnsafePath", ch, err)
		}
	}
}

func TestWriteLayerRefusesSymlinkParents(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("host"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "lib")); err != nil {
		t.Fatal(err)
	}
	_, err := WriteLayer(context.Background(), root, Changes{Paths: []string{"lib/secret"}}, LayerOptions{Dir: t.TempDir()})
	if !errors.Is(err, ErrUnsafePath) {
		t.Fatalf("error = %v, want ErrUnsafePath (read through a symlink out of root)", err)
	}
}

func TestWriteLayerMissingPath(t *testing.T) {
	_, err := WriteLayer(context.Background(), t.TempDir(), Changes{Paths: []string{"nope"}}, LayerOptions{Dir: t.TempDir()})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error = %v, want not-exist", err)
	}
}

func TestWriteLayerCancelled(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	_, err := WriteLayer(ctx, root, Changes{Paths: []string{"f"}}, LayerOptions{Dir: dir})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("cancelled write left %d files behind", len(left))
	}
}

func TestLayerFormats(t *testing.T) {
	requireRoot(t)
	root, ch := fixture(t)
	tests := []struct {
		c    Compression
		oci  bool
		want types.MediaType
	}{
		{Gzip, false, types.DockerLayer},
		{Gzip, true, types.OCILayer},
		{"", true, types.OCILayer},
		{Zstd, false, types.OCILayerZStd},
		{Zstd, true, types.OCILayerZStd},
		{Uncompressed, false, types.DockerUncompressedLayer},
		{Uncompressed, true, types.OCIUncompressedLayer},
	}
	for _, tt := range tests {
		t.Run(string(tt.c)+map[bool]string{true: "-oci", false: "-docker"}[tt.oci], func(t *testing.T) {
			dir := t.TempDir()
			l, err := WriteLayer(context.Background(), root, ch, LayerOptions{Compression: tt.c, OCI: tt.oci, Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			if mt, _ := l.MediaType(); mt != tt.want {
				t.Errorf("media type = %s, want %s", mt, tt.want)
			}
			checkLayer(t, l)
			d, _ := l.Digest()
			if !strings.HasPrefix(l.Path(), dir) || filepath.Base(l.Path()) != "sha256-"+d.Hex {
				t.Errorf("blob path %s, want sha256-%s in %s", l.Path(), d.Hex, dir)
			}
			if tt.c == Uncompressed {
				if diffID, _ := l.DiffID(); diffID != d {
					t.Errorf("uncompressed layer digest %s != diffID %s", d, diffID)
				}
			}
		})
	}
}

// checkLayer recomputes digest, diffID and size from the bytes Compressed
// and Uncompressed return. validate.Layer does the same but assumes gzip.
func checkLayer(t *testing.T, l *Layer) {
	t.Helper()
	if l.Compression() == Gzip {
		if err := validate.Layer(l); err != nil {
			t.Errorf("validate.Layer: %v", err)
		}
	}
	sum := func(open func() (io.ReadCloser, error)) (v1.Hash, int64) {
		rc, err := open()
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		h, n, err := v1.SHA256(rc)
		if err != nil {
			t.Fatal(err)
		}
		return h, n
	}
	digest, size := sum(l.Compressed)
	diffID, _ := sum(l.Uncompressed)
	if d, _ := l.Digest(); d != digest {
		t.Errorf("Digest() = %s, bytes hash to %s", d, digest)
	}
	if s, _ := l.Size(); s != size {
		t.Errorf("Size() = %d, blob has %d bytes", s, size)
	}
	if d, _ := l.DiffID(); d != diffID {
		t.Errorf("DiffID() = %s, uncompressed bytes hash to %s", d, diffID)
	}
}

func TestEmptyLayer(t *testing.T) {
	for _, c := range []Compression{Gzip, Zstd, Uncompressed} {
		l, err := WriteLayer(context.Background(), t.TempDir(), Changes{}, LayerOptions{Compression: c, Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if !l.Empty() {
			t.Errorf("%s: Empty() = false for no changes", c)
		}
		checkLayer(t, l)
		// An empty layer is still a valid tar: the 1024-byte end marker.
		if diffID, _ := l.DiffID(); diffID.Hex != "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef" {
			t.Errorf("%s: empty diffID = %s, want the well-known empty tar", c, diffID)
		}
	}
}

// cap_net_bind_service, permitted and effective, as setcap writes it
// (VFS_CAP_REVISION_2).
var netBindCaps = string([]byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

// A file's capabilities reach the layer, as BuildKit's layers carry them;
// no other extended attribute does.
func TestWriteLayerKeepsFileCapabilitiesOnly(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	for _, f := range []string{"ping", "plain"} {
		if err := os.WriteFile(filepath.Join(root, f), []byte(f), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Setxattr(filepath.Join(root, "ping"), "security.capability", []byte(netBindCaps), 0); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ping", "plain"} {
		if err := unix.Setxattr(filepath.Join(root, f), "user.note", []byte("x"), 0); err != nil {
			t.Logf("this filesystem takes no user xattrs (%v): only the capability is checked", err)
		}
	}
	l, err := WriteLayer(context.Background(), root, Changes{Paths: []string{"ping", "plain"}}, LayerOptions{Compression: Uncompressed, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	got := map[string]map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = map[string]string{}
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				got[h.Name][k] = v
			}
		}
	}
	if want := map[string]string{"SCHILY.xattr.security.capability": netBindCaps}; !maps.Equal(got["ping"], want) {
		t.Errorf("ping's xattrs in the layer = %q, want %q", got["ping"], want)
	}
	if len(got["plain"]) != 0 {
		t.Errorf("plain's xattrs in the layer = %q, want none", got["plain"])
	}
}
