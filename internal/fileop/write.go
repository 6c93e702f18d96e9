package fileop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
	"github.com/kiln-build/kiln/internal/ownership"
)

// Owner is a numeric uid/gid pair.
type Owner struct{ UID, GID int }

// writer writes into one rootfs and records what it changed. Paths are
// resolved through an archive.Root (symlinks followed but scoped to the
// rootfs, as filepath-securejoin does) relative to open directory
// descriptors kept between calls, and every operation uses a short
// /proc/self/fd path: a tree nested thousands deep is written in linear
// time and PATH_MAX does not apply.
type writer struct {
	rootfs  string
	changed map[string]bool
	fs      *archive.Root // opened on first use
}

func newWriter(rootfs string) (*writer, error) {
	abs, err := filepath.Abs(rootfs)
	if err != nil {
		return nil, fmt.Errorf("rootfs %q: %w", rootfs, err)
	}
	return &writer{rootfs: abs, changed: map[string]bool{}}, nil
}

// root returns the rootfs's archive.Root.
func (w *writer) root() (*archive.Root, error) {
	if w.fs == nil {
		r, err := archive.OpenRoot(w.rootfs)
		if err != nil {
			return nil, err
		}
		w.fs = r
	}
	return w.fs, nil
}

// close releases the descriptors the writer holds.
func (w *writer) close() {
	if w.fs != nil {
		_ = w.fs.Close()
		w.fs = nil
	}
}

// logical cleans an absolute in-rootfs path to slash form without the
// leading slash ("" for the root).
func logical(p string) string {
	return strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(p)), "/")
}

// resolve returns a path for operating on the logical path lp, symlinks
// scoped to the rootfs, and lp's resolved rootfs-relative path. With
// followLast false the last component itself is not followed, so a symlink
// there is replaced rather than written through, and its parent must
// exist; with followLast true lp must be a directory. The path is a
// /proc/self/fd one, valid until the writer's next resolution.
func (w *writer) resolve(lp string, followLast bool) (abs, phys string, err error) {
	r, err := w.root()
	if err != nil {
		return "", "", err
	}
	if followLast || lp == "" {
		fd, phys, err := r.Dir(lp, false)
		if err != nil {
			return "", "", fmt.Errorf("resolve /%s: %w", lp, err)
		}
		return archive.ProcPath(fd, "."), phys, nil
	}
	fd, pphys, err := r.Dir(path.Dir(lp), false)
	if err != nil {
		return "", "", fmt.Errorf("resolve /%s: %w", lp, err)
	}
	return archive.ProcPath(fd, path.Base(lp)), path.Join(pphys, path.Base(lp)), nil
}

// mark records the resolved rootfs-relative path phys as changed.
func (w *writer) mark(phys string) {
	if phys != "" && phys != "." {
		w.changed[phys] = true
	}
}

func (w *writer) result() []string {
	out := make([]string, 0, len(w.changed))
	for p := range w.changed {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// mkdirAll creates the logical directory lp and its missing parents with
// mode 0755 and the given owner (nil = 0:0), like WORKDIR and the implicit
// parents of a COPY destination. Existing directories are left untouched;
// a dangling symlink on the way gets its (scoped) target created.
func (w *writer) mkdirAll(ctx context.Context, lp string, owner *Owner) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r, err := w.root()
	if err != nil {
		return err
	}
	o := Owner{}
	if owner != nil {
		o = *owner
	}
	r.Mkdir = archive.MkdirOptions{Mode: 0o755, UID: o.UID, GID: o.GID, Created: w.mark}
	if _, _, err := r.Dir(lp, true); err != nil {
		return fmt.Errorf("mkdir /%s: %w", lp, err)
	}
	return nil
}

// meta is what gets applied to a written object.
type meta struct {
	mode  fs.FileMode // type bits + perm + setuid/setgid/sticky
	uid   int
	gid   int
	mtime time.Time
	rdev  uint64
	// xattrs are an archive entry's extended attributes, set after the
	// chown (which would clear file capabilities).
	xattrs map[string]string
}

// fileMode converts a user mode (e.g. from --chmod) to an fs.FileMode. It
// accepts both Go's ModeSetuid/ModeSetgid/ModeSticky bits and raw octal
// 04000/02000/01000, so a caller may pass fs.FileMode(0o4755) directly.
func fileMode(m fs.FileMode) fs.FileMode {
	out := m.Perm()
	if m&fs.ModeSetuid != 0 || m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&fs.ModeSetgid != 0 || m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&fs.ModeSticky != 0 || m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}

func permBits(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

// applyMeta sets owner, then mode (chown clears setuid bits, so chmod comes
// second), then times. Symlinks get owner and times only.
func applyMeta(abs string, m meta, setTimes bool) error {
	if err := ownership.Lchown(abs, m.uid, m.gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if m.mode&fs.ModeSymlink == 0 {
		if err := os.Chmod(abs, permBits(m.mode)); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if setTimes {
		return setMtime(abs, m.mtime)
	}
	return nil
}

func setMtime(abs string, t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, abs, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set mtime: %w", err)
	}
	return nil
}

// removeNonDir clears the way for a new non-directory at abs (the logical
// path lp). Replacing a directory with a file is refused, as BuildKit does.
// A removal may drop cached descriptors: resolve again after it.
func (w *writer) removeNonDir(abs, lp string) error {
	fi, err := os.Lstat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("cannot overwrite directory /%s with a non-directory", lp)
	}
	if err := os.Remove(abs); err != nil {
		return err
	}
	w.fs.Invalidate(path.Dir(lp))
	return nil
}

// writeFile writes r to the logical path lp, replacing what was there.
func (w *writer) writeFile(lp string, r io.Reader, m meta) error {
	abs, _, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	if err := w.removeNonDir(abs, lp); err != nil {
		return fmt.Errorf("write /%s: %w", lp, err)
	}
	// Again: the removal may have dropped the descriptor abs names.
	abs, phys, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(abs, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("write /%s: %w", lp, err)
	}
	if _, err := io.Copy(f, r); err != nil {
		_ = f.Close()
		return fmt.Errorf("write /%s: %w", lp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write /%s: %w", lp, err)
	}
	w.mark(phys)
	if err := applyMeta(abs, m, true); err != nil {
		return fmt.Errorf("/%s: %w", lp, err)
	}
	return nil
}

// writeLink makes lp a hard link to target, a file this writer wrote
// (both logical paths), replacing a non-directory at lp.
func (w *writer) writeLink(lp, target string) error {
	r, err := w.root()
	if err != nil {
		return err
	}
	tfd, _, err := r.Dir(path.Dir(target), false)
	if err != nil {
		return fmt.Errorf("link /%s: %w", lp, err)
	}
	// Its own descriptor: replacing lp may drop the cached ones.
	tdir, err := unix.Dup(tfd)
	if err != nil {
		return fmt.Errorf("link /%s: %w", lp, err)
	}
	defer unix.Close(tdir)
	abs, _, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	if err := w.removeNonDir(abs, lp); err != nil {
		return fmt.Errorf("link /%s: %w", lp, err)
	}
	fd, pphys, err := r.Dir(path.Dir(lp), false)
	if err != nil {
		return fmt.Errorf("link /%s: %w", lp, err)
	}
	if err := unix.Linkat(tdir, path.Base(target), fd, path.Base(lp), 0); err != nil {
		return fmt.Errorf("link /%s to /%s: %w", lp, target, err)
	}
	w.mark(path.Join(pphys, path.Base(lp)))
	return nil
}

// writeSymlink creates a symlink at lp (replacing a non-directory there);
// the target is stored verbatim: it is resolved later inside the container.
func (w *writer) writeSymlink(lp, target string, m meta) error {
	abs, _, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	if err := w.removeNonDir(abs, lp); err != nil {
		return fmt.Errorf("symlink /%s: %w", lp, err)
	}
	// Again: the removal may have dropped the descriptor abs names.
	abs, phys, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	if err := os.Symlink(target, abs); err != nil {
		return fmt.Errorf("symlink /%s: %w", lp, err)
	}
	w.mark(phys)
	m.mode = fs.ModeSymlink
	if err := applyMeta(abs, m, true); err != nil {
		return fmt.Errorf("/%s: %w", lp, err)
	}
	return nil
}

// writeSpecial creates a device node or FIFO at lp.
func (w *writer) writeSpecial(lp string, m meta) error {
	abs, _, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	if err := w.removeNonDir(abs, lp); err != nil {
		return fmt.Errorf("mknod /%s: %w", lp, err)
	}
	// Again: the removal may have dropped the descriptor abs names.
	abs, phys, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	var typ uint32
	switch {
	case m.mode&fs.ModeNamedPipe != 0:
		typ = unix.S_IFIFO
	case m.mode&fs.ModeCharDevice != 0:
		typ = unix.S_IFCHR
	case m.mode&fs.ModeDevice != 0:
		typ = unix.S_IFBLK
	default:
		return nil // sockets are not copied, as in BuildKit
	}
	if err := unix.Mknod(abs, typ|uint32(m.mode.Perm()), int(m.rdev)); err != nil {
		return fmt.Errorf("mknod /%s: %w", lp, err)
	}
	w.mark(phys)
	if err := applyMeta(abs, m, true); err != nil {
		return fmt.Errorf("/%s: %w", lp, err)
	}
	return nil
}

// ensureDir makes lp a directory (following a symlink to a directory, so a
// merged-/usr "lib -> usr/lib" keeps working) and applies m without times;
// the caller sets the mtime after the directory's children are written.
func (w *writer) ensureDir(lp string, m meta) error {
	if lp != "" {
		abs, _, err := w.resolve(lp, false)
		if err != nil {
			return err
		}
		// A non-directory (other than a symlink, followed below) is
		// replaced.
		if fi, err := os.Lstat(abs); err == nil && !fi.IsDir() && fi.Mode()&fs.ModeSymlink == 0 {
			if err := w.removeNonDir(abs, lp); err != nil {
				return fmt.Errorf("mkdir /%s: %w", lp, err)
			}
		}
	}
	r, err := w.root()
	if err != nil {
		return err
	}
	r.Mkdir = archive.MkdirOptions{Mode: 0o700, Created: w.mark}
	fd, phys, err := r.Dir(lp, true)
	if err != nil {
		return fmt.Errorf("mkdir /%s: %w", lp, err)
	}
	w.mark(phys)
	if err := applyMeta(archive.ProcPath(fd, "."), m, false); err != nil {
		return fmt.Errorf("/%s: %w", lp, err)
	}
	return nil
}

// setDirMtime sets the mtime of the directory lp.
func (w *writer) setDirMtime(lp string, t time.Time) error {
	abs, _, err := w.resolve(lp, true)
	if err != nil {
		return err
	}
	return setMtime(abs, t)
}

// Mkdir creates dir (absolute, in rootfs) and its missing parents with mode
// 0755 and owner (nil = 0:0), as WORKDIR does, and returns the created
// rootfs-relative paths (empty if it already existed).
func Mkdir(ctx context.Context, rootfs, dir string, owner *Owner) ([]string, error) {
	w, err := newWriter(rootfs)
	if err != nil {
		return nil, err
	}
	defer w.close()
	if err := w.mkdirAll(ctx, logical(dir), owner); err != nil {
		return nil, err
	}
	return w.result(), nil
}
