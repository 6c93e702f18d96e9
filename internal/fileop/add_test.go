package fileop

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
)

type tarEntry struct {
	name, link string
	typ        byte
	data       string
	mode       int64
	uid, gid   int
}

func mkTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, ModTime: epoch, Size: int64(len(e.data)), Format: tar.FormatPAX}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte(e.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func compress(t *testing.T, kind string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch kind {
	case "tar":
		return data
	case "gzip":
		zw := gzip.NewWriter(&buf)
		_, _ = zw.Write(data)
		_ = zw.Close()
	case "xz":
		xw, err := xz.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = xw.Write(data)
		_ = xw.Close()
	case "bzip2":
		// Go has no bzip2 writer; use the real tool.
		bin, err := exec.LookPath("bzip2")
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("bzip2 binary missing")
			}
			t.Skip("bzip2 binary missing")
		}
		cmd := exec.Command(bin, "-c")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	return buf.Bytes()
}

func TestAddArchive(t *testing.T) {
	requireRoot(t)
	archive := mkTar(t, []tarEntry{
		{name: "pkg/", typ: tar.TypeDir, mode: 0o755, uid: 5, gid: 6},
		{name: "pkg/bin", data: "bin", mode: 0o4755, uid: 5, gid: 6},
		{name: "pkg/ln", typ: tar.TypeSymlink, link: "bin"},
		{name: "pkg/hard", typ: tar.TypeLink, link: "pkg/bin"},
		{name: "noparent/x", data: "x"},
	})
	for _, kind := range []string{"tar", "gzip", "bzip2", "xz"} {
		t.Run(kind, func(t *testing.T) {
			ctxDir, rootfs := t.TempDir(), t.TempDir()
			if err := os.WriteFile(filepath.Join(ctxDir, "a.tar.whatever"), compress(t, kind, archive), 0o644); err != nil {
				t.Fatal(err)
			}
			op := Add{Copy: Copy{Src: Tree{Root: ctxDir, ResetOwner: true}, Sources: []string{"a.tar.whatever"}, Dest: "/opt"}}
			changed, err := op.Apply(context.Background(), rootfs)
			if err != nil {
				t.Fatal(err)
			}
			expectTree(t, rootfs, map[string]*got{
				"opt/pkg":            {dir: true, mode: 0o755, uid: 5, gid: 6},
				"opt/pkg/bin":        {data: "bin", mode: 0o4755, uid: 5, gid: 6},
				"opt/pkg/ln":         {link: "bin"},
				"opt/pkg/hard":       {data: "bin", mode: 0o4755, uid: 5, gid: 6},
				"opt/noparent/x":     {data: "x", mode: 0o644},
				"opt/a.tar.whatever": nil,
			})
			if got := mtime(t, rootfs, "opt/pkg"); !got.Equal(epoch) {
				t.Errorf("dir mtime = %v, want %v", got, epoch)
			}
			if len(changed) == 0 || changed[0] != "opt" {
				t.Errorf("changed = %q", changed)
			}
		})
	}
	t.Run("chown overrides archive owner", func(t *testing.T) {
		ctxDir, rootfs := t.TempDir(), t.TempDir()
		if err := os.WriteFile(filepath.Join(ctxDir, "a.tar"), archive, 0o644); err != nil {
			t.Fatal(err)
		}
		op := Add{Copy: Copy{Src: Tree{Root: ctxDir}, Sources: []string{"a.tar"}, Dest: "/", Chown: &Owner{UID: 9, GID: 9}}}
		if _, err := op.Apply(context.Background(), rootfs); err != nil {
			t.Fatal(err)
		}
		expectTree(t, rootfs, map[string]*got{"pkg/bin": {data: "bin", mode: 0o4755, uid: 9, gid: 9}})
	})
}

// An archive's root entry ("./", as `tar -C dir -czf a.tgz .` writes it)
// leaves the destination's owner and mode alone, whether ADD made the
// destination or it was there, as BuildKit does.
func TestAddArchiveRootEntryKeepsDestination(t *testing.T) {
	requireRoot(t)
	archive := mkTar(t, []tarEntry{
		{name: "./", typ: tar.TypeDir, mode: 0o750, uid: 1000, gid: 1000},
		{name: "./f.txt", data: "f", mode: 0o640, uid: 1000, gid: 1000},
	})
	ctxDir, rootfs := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "a.tgz"), compress(t, "gzip", archive), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(rootfs, "opt/existing"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(rootfs, "opt/existing"), 0o711); err != nil {
		t.Fatal(err)
	}
	for _, dest := range []string{"/opt/existing/", "/opt/extracted/"} {
		op := Add{Copy: Copy{Src: Tree{Root: ctxDir, ResetOwner: true}, Sources: []string{"a.tgz"}, Dest: dest}}
		if _, err := op.Apply(context.Background(), rootfs); err != nil {
			t.Fatal(err)
		}
	}
	expectTree(t, rootfs, map[string]*got{
		"opt/existing":        {dir: true, mode: 0o711},
		"opt/existing/f.txt":  {data: "f", mode: 0o640, uid: 1000, gid: 1000},
		"opt/extracted":       {dir: true, mode: 0o755},
		"opt/extracted/f.txt": {data: "f", mode: 0o640, uid: 1000, gid: 1000},
	})
}

func TestAddArchiveHostile(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name    string
		entries []tarEntry
		wantErr error
		absent  []string // host paths that must not appear
		inside  map[string]*got
	}{
		{name: "dot-dot entry", entries: []tarEntry{{name: "../../../../tmp/kiln-tar-escape", data: "x"}}, wantErr: archive.ErrEscapes, absent: []string{"/tmp/kiln-tar-escape"}},
		{name: "hardlink out", entries: []tarEntry{{name: "h", typ: tar.TypeLink, link: "../../../etc/passwd"}}, wantErr: archive.ErrEscapes},
		{
			name: "symlink then write through it stays in rootfs",
			entries: []tarEntry{
				{name: "esc", typ: tar.TypeSymlink, link: "/tmp/kiln-tar-sym"},
				{name: "esc/f", data: "x"},
			},
			absent: []string{"/tmp/kiln-tar-sym/f"},
			inside: map[string]*got{"tmp/kiln-tar-sym/f": {data: "x", mode: 0o644}},
		},
		{
			name: "relative symlink climbing out stays in rootfs",
			entries: []tarEntry{
				{name: "d/", typ: tar.TypeDir, mode: 0o755},
				{name: "d/up", typ: tar.TypeSymlink, link: "../../../../../../tmp"},
				{name: "d/up/kiln-tar-rel", data: "x"},
			},
			absent: []string{"/tmp/kiln-tar-rel"},
			inside: map[string]*got{"tmp/kiln-tar-rel": {data: "x", mode: 0o644}},
		},
		{
			// Replacing a file reached through a symlinked directory drops
			// the cached descriptors, the parent's among them.
			name: "file replaced under a symlinked directory",
			entries: []tarEntry{
				{name: "sub/", typ: tar.TypeDir, mode: 0o755},
				{name: "l", typ: tar.TypeSymlink, link: "sub"},
				{name: "l/a", data: "first"},
				{name: "l/a", data: "second"},
				{name: "l/b", data: "b"},
			},
			inside: map[string]*got{"sub/a": {data: "second", mode: 0o644}, "sub/b": {data: "b", mode: 0o644}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctxDir, rootfs := t.TempDir(), t.TempDir()
			if err := os.WriteFile(filepath.Join(ctxDir, "evil.tar"), mkTar(t, tt.entries), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := Add{Copy: Copy{Src: Tree{Root: ctxDir}, Sources: []string{"evil.tar"}, Dest: "/"}}.Apply(context.Background(), rootfs)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && err != nil {
				t.Fatal(err)
			}
			for _, p := range tt.absent {
				if _, err := os.Lstat(p); err == nil {
					os.RemoveAll(p)
					t.Errorf("archive escaped to %s", p)
				}
			}
			expectTree(t, rootfs, tt.inside)
		})
	}
}

func TestAddNonArchiveCopiedAsFile(t *testing.T) {
	requireRoot(t)
	ctxDir, rootfs := t.TempDir(), t.TempDir()
	gz := compress(t, "gzip", []byte("just gzip, not a tar"))
	mkTree(t, ctxDir, map[string]spec{"plain.txt": {data: "hello"}, "x.gz": {data: string(gz)}})
	op := Add{Copy: Copy{Src: Tree{Root: ctxDir, ResetOwner: true}, Sources: []string{"plain.txt", "x.gz"}, Dest: "/d/"}}
	if _, err := op.Apply(context.Background(), rootfs); err != nil {
		t.Fatal(err)
	}
	expectTree(t, rootfs, map[string]*got{"d/plain.txt": {data: "hello", mode: 0o644}, "d/x.gz": {data: string(gz), mode: 0o644}})
}

func TestAddURL(t *testing.T) {
	requireRoot(t)
	body := mkTar(t, []tarEntry{{name: "inner", data: "i"}}) // must NOT be extracted
	sum := sha256.Sum256(body)
	lastMod := time.Date(2019, 5, 6, 7, 8, 9, 0, time.UTC)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Last-Modified", lastMod.Format(http.TimeFormat))
		_, _ = w.Write(body)
	}))
	defer srv.Close()

	tests := []struct {
		name     string
		src      string
		dest     string
		checksum string
		chmod    *Chmod
		chown    *Owner
		path     string
		mode     os.FileMode
		uid      int
		wantErr  error
		errAny   bool
	}{
		{name: "into dir by basename", src: srv.URL + "/dl/file.tar", dest: "/d/", path: "d/file.tar", mode: 0o600},
		{name: "to file path", src: srv.URL + "/dl/file.tar", dest: "/d/renamed", path: "d/renamed", mode: 0o600},
		{name: "chmod and chown", src: srv.URL + "/f", dest: "/x", chmod: fmode(0o755), chown: &Owner{UID: 3, GID: 3}, path: "x", mode: 0o755, uid: 3},
		{name: "checksum ok", src: srv.URL + "/f", dest: "/c", checksum: "sha256:" + hex.EncodeToString(sum[:]), path: "c", mode: 0o600},
		{name: "checksum mismatch", src: srv.URL + "/f", dest: "/c", checksum: "sha256:" + hex.EncodeToString(make([]byte, 32)), wantErr: ErrChecksum},
		{name: "http error", src: srv.URL + "/missing", dest: "/m", errAny: true},
		{name: "git url", src: "https://127.0.0.1/repo.git", dest: "/g", wantErr: ErrNotSupported},
		{name: "git ssh", src: "git@127.0.0.1:repo", dest: "/g", wantErr: ErrNotSupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rootfs := t.TempDir()
			op := Add{Copy: Copy{Src: Tree{Root: t.TempDir()}, Sources: []string{tt.src}, Dest: tt.dest, Chmod: tt.chmod, Chown: tt.chown}, Checksum: tt.checksum, Client: srv.Client()}
			_, err := op.Apply(context.Background(), rootfs)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			case tt.errAny:
				if err == nil {
					t.Fatal("want error")
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			expectTree(t, rootfs, map[string]*got{tt.path: {data: string(body), mode: tt.mode, uid: tt.uid, gid: tt.uid}})
			if got := mtime(t, rootfs, tt.path); !got.Equal(lastMod) {
				t.Errorf("mtime = %v, want Last-Modified %v", got, lastMod)
			}
		})
	}
}

func TestAddChecksumOnLocalRefused(t *testing.T) {
	ctxDir := t.TempDir()
	mkTree(t, ctxDir, map[string]spec{"a": {data: "a"}})
	_, err := Add{Copy: Copy{Src: Tree{Root: ctxDir}, Sources: []string{"a"}, Dest: "/"}, Checksum: "sha256:00"}.Apply(context.Background(), t.TempDir())
	if !errors.Is(err, ErrNotSupported) {
		t.Fatalf("err = %v, want ErrNotSupported", err)
	}
}

// --unpack: true extracts an archive a URL serves (a file that is no
// archive is downloaded as usual); false copies a local archive as it is.
func TestAddUnpack(t *testing.T) {
	requireRoot(t)
	tgz := compress(t, "gzip", mkTar(t, []tarEntry{{name: "pkg/inner", data: "i", mode: 0o640}}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/plain.txt" {
			_, _ = w.Write([]byte("plain"))
			return
		}
		_, _ = w.Write(tgz)
	}))
	defer srv.Close()
	yes, no := true, false
	ctxDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "a.tgz"), tgz, 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs := t.TempDir()
	for _, op := range []Add{
		{Copy: Copy{Src: Tree{Root: ctxDir}, Sources: []string{srv.URL + "/a.tgz"}, Dest: "/url/"}, Unpack: &yes, Client: srv.Client()},
		{Copy: Copy{Src: Tree{Root: ctxDir}, Sources: []string{srv.URL + "/plain.txt"}, Dest: "/url/"}, Unpack: &yes, Client: srv.Client()},
		{Copy: Copy{Src: Tree{Root: ctxDir}, Sources: []string{srv.URL + "/a.tgz"}, Dest: "/kept/"}, Client: srv.Client()},
		{Copy: Copy{Src: Tree{Root: ctxDir, ResetOwner: true}, Sources: []string{"a.tgz"}, Dest: "/local/"}, Unpack: &no},
	} {
		if _, err := op.Apply(context.Background(), rootfs); err != nil {
			t.Fatal(err)
		}
	}
	expectTree(t, rootfs, map[string]*got{
		"url/pkg/inner": {data: "i", mode: 0o640},
		"url/a.tgz":     nil,
		"url/plain.txt": {data: "plain", mode: 0o600},
		"kept/a.tgz":    {data: string(tgz), mode: 0o600},
		"local/a.tgz":   {data: string(tgz), mode: 0o644},
		"local/pkg":     nil,
	})
}

// An archive entry's xattrs are applied (a capability survives the chown
// applied before it), except trusted.overlay.*, which would steer the
// overlay the root filesystem is.
func TestAddArchiveXattrs(t *testing.T) {
	requireRoot(t)
	caps := string([]byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "capped", Typeflag: tar.TypeReg, Mode: 0o755, Uid: 5, Size: 1, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": caps}},
		{Name: "steer", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"SCHILY.xattr.trusted.overlay.redirect": "/etc", "SCHILY.xattr.trusted.overlay.opaque": "y"}},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ctxDir, rootfs := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(ctxDir, "a.tar"), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	op := Add{Copy: Copy{Src: Tree{Root: ctxDir}, Sources: []string{"a.tar"}, Dest: "/x/"}}
	if _, err := op.Apply(context.Background(), rootfs); err != nil {
		t.Fatal(err)
	}
	val := make([]byte, 64)
	if n, err := unix.Lgetxattr(filepath.Join(rootfs, "x/capped"), "security.capability", val); err != nil || string(val[:n]) != caps {
		t.Errorf("x/capped security.capability = %q, %v; want the archive's", val[:n], err)
	}
	for _, attr := range []string{"trusted.overlay.redirect", "trusted.overlay.opaque"} {
		if _, err := unix.Lgetxattr(filepath.Join(rootfs, "x/steer"), attr, val); err == nil {
			t.Errorf("x/steer has %s from the archive", attr)
		}
	}
}
