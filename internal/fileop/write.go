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

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// Owner is a numeric uid/gid pair.
type Owner struct{ UID, GID int }

// writer writes into one rootfs and records what it changed.
type writer struct {
	rootfs  string
	changed map[string]bool
}

func newWriter(rootfs string) (*writer, error) {
	abs, err := filepath.Abs(rootfs)
	if err != nil {
		return nil, fmt.Errorf("rootfs %q: %w", rootfs, err)
	}
	return &writer{rootfs: abs, changed: map[string]bool{}}, nil
}

// logical cleans an absolute in-rootfs path to slash form without the
// leading slash ("" for the root).
func logical(p string) string {
	return strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(p)), "/")
}

// resolve returns the on-disk path for the logical path, following symlinks
// scoped to the rootfs. With followLast false the last component itself is
// not followed, so a symlink there is replaced rather than written through.
func (w *writer) resolve(lp string, followLast bool) (string, error) {
	if followLast || lp == "" {
		p, err := securejoin.SecureJoin(w.rootfs, lp)
		if err != nil {
			return "", fmt.Errorf("resolve /%s: %w", lp, err)
		}
		return p, nil
	}
	dir, err := securejoin.SecureJoin(w.rootfs, path.Dir(lp))
	if err != nil {
		return "", fmt.Errorf("resolve /%s: %w", lp, err)
	}
	return filepath.Join(dir, path.Base(lp)), nil
}

func (w *writer) mark(abs string) {
	rel, err := filepath.Rel(w.rootfs, abs)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return
	}
	w.changed[filepath.ToSlash(rel)] = true
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
// parents of a COPY destination. Existing directories are left untouched.
func (w *writer) mkdirAll(ctx context.Context, lp string, owner *Owner) error {
	o := Owner{}
	if owner != nil {
		o = *owner
	}
	cur := ""
	for _, c := range splitPath(lp) {
		if err := ctx.Err(); err != nil {
			return err
		}
		cur = path.Join(cur, c)
		abs, err := w.resolve(cur, true)
		if err != nil {
			return err
		}
		fi, err := os.Stat(abs)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("mkdir /%s: %w", cur, syscall.ENOTDIR)
			}
			continue
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("mkdir /%s: %w", cur, err)
		}
		// cur may be a dangling symlink whose (scoped) target's parents are
		// missing too: create those first, by their real location.
		if parent, err := filepath.Rel(w.rootfs, filepath.Dir(abs)); err == nil && parent != "." && filepath.ToSlash(parent) != path.Dir(cur) {
			if err := w.mkdirAll(ctx, filepath.ToSlash(parent), owner); err != nil {
				return err
			}
		}
		if err := os.Mkdir(abs, 0o755); err != nil {
			return fmt.Errorf("mkdir /%s: %w", cur, err)
		}
		// Mkdir is subject to the umask; the image must not be.
		if err := os.Chmod(abs, 0o755); err != nil {
			return fmt.Errorf("chmod /%s: %w", cur, err)
		}
		if err := os.Lchown(abs, o.UID, o.GID); err != nil {
			return fmt.Errorf("chown /%s: %w", cur, err)
		}
		w.mark(abs)
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
	if err := os.Lchown(abs, m.uid, m.gid); err != nil {
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

// removeNonDir clears the way for a new non-directory at abs. Replacing a
// directory with a file is refused, as BuildKit does.
func removeNonDir(abs string) error {
	fi, err := os.Lstat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("cannot overwrite directory %s with a non-directory", abs)
	}
	return os.Remove(abs)
}

// writeFile writes r to the logical path lp, replacing what was there.
func (w *writer) writeFile(lp string, r io.Reader, m meta) error {
	abs, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	if err := removeNonDir(abs); err != nil {
		return fmt.Errorf("write /%s: %w", lp, err)
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
	w.mark(abs)
	if err := applyMeta(abs, m, true); err != nil {
		return fmt.Errorf("/%s: %w", lp, err)
	}
	return nil
}

// writeSymlink creates a symlink at lp (replacing a non-directory there);
// the target is stored verbatim: it is resolved later inside the container.
func (w *writer) writeSymlink(lp, target string, m meta) error {
	abs, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	if err := removeNonDir(abs); err != nil {
		return fmt.Errorf("symlink /%s: %w", lp, err)
	}
	if err := os.Symlink(target, abs); err != nil {
		return fmt.Errorf("symlink /%s: %w", lp, err)
	}
	w.mark(abs)
	m.mode = fs.ModeSymlink
	if err := applyMeta(abs, m, true); err != nil {
		return fmt.Errorf("/%s: %w", lp, err)
	}
	return nil
}

// writeSpecial creates a device node or FIFO at lp.
func (w *writer) writeSpecial(lp string, m meta) error {
	abs, err := w.resolve(lp, false)
	if err != nil {
		return err
	}
	if err := removeNonDir(abs); err != nil {
		return fmt.Errorf("mknod /%s: %w", lp, err)
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
	w.mark(abs)
	if err := applyMeta(abs, m, true); err != nil {
		return fmt.Errorf("/%s: %w", lp, err)
	}
	return nil
}

// ensureDir makes lp a directory (following a symlink to a directory, so a
// merged-/usr "lib -> usr/lib" keeps working) and applies m without times;
// the caller sets the mtime after the directory's children are written. It
// returns the on-disk path.
func (w *writer) ensureDir(lp string, m meta) (string, error) {
	abs, err := w.resolve(lp, true)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(abs)
	switch {
	case err == nil && fi.IsDir():
	case err == nil || !errors.Is(err, fs.ErrNotExist):
		if err == nil {
			err = os.Remove(abs)
		}
		if err != nil {
			return "", fmt.Errorf("mkdir /%s: %w", lp, err)
		}
		fallthrough
	default:
		if err := os.Mkdir(abs, 0o700); err != nil {
			return "", fmt.Errorf("mkdir /%s: %w", lp, err)
		}
	}
	w.mark(abs)
	if err := applyMeta(abs, m, false); err != nil {
		return "", fmt.Errorf("/%s: %w", lp, err)
	}
	return abs, nil
}

// Mkdir creates dir (absolute, in rootfs) and its missing parents with mode
// 0755 and owner (nil = 0:0), as WORKDIR does, and returns the created
// rootfs-relative paths (empty if it already existed).
func Mkdir(ctx context.Context, rootfs, dir string, owner *Owner) ([]string, error) {
	w, err := newWriter(rootfs)
	if err != nil {
		return nil, err
	}
	if err := w.mkdirAll(ctx, logical(dir), owner); err != nil {
		return nil, err
	}
	return w.result(), nil
}
