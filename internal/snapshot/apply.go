package snapshot

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// ErrUnsafePath is returned (wrapped) for a tar entry that would write or
// link outside the target directory.
var ErrUnsafePath = errors.New("unsafe path in layer")

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// Apply extracts one uncompressed layer tar stream into dir, honouring OCI
// whiteouts: ".wh.<name>" removes <name> of lower layers, and
// "<d>/.wh..wh..opq" removes everything in <d> that lower layers put there.
// Whiteouts never remove what this same layer adds, whatever order the tar
// lists them in.
//
// Modes (with setuid, setgid, sticky), numeric owners, mtimes (of symlinks
// too) and "SCHILY.xattr." extended attributes are restored; a directory's
// mtime is set after its children are written. Device nodes that cannot be
// created (EPERM, e.g. in a user namespace) are skipped silently, as Docker
// does in rootless mode.
func Apply(ctx context.Context, dir string, r io.Reader) error {
	return apply(ctx, &applier{dir: dir, added: map[string]bool{}}, r)
}

func apply(ctx context.Context, a *applier, r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("apply layer: %w", err)
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("apply layer: read tar: %w", err)
		}
		if err := a.entry(hdr, tr); err != nil {
			return fmt.Errorf("apply layer: %s: %w", hdr.Name, err)
		}
	}
	if err := a.finish(); err != nil {
		return fmt.Errorf("apply layer: %w", err)
	}
	return nil
}

type dirTime struct {
	path         string
	atime, mtime time.Time
}

type applier struct {
	dir string
	// overlay keeps whiteouts as overlayfs markers instead of applying
	// them: dir holds one layer alone, to be stacked by an overlay mount.
	overlay bool
	// added holds the cleaned names this layer wrote, so that whiteouts
	// only ever remove lower-layer content.
	added     map[string]bool
	opaques   []string // cleaned dir names with an opaque marker
	whiteouts []string // cleaned names whose removal is deferred
	dirTimes  []dirTime
}

// clean makes a tar name relative and clean, refusing "..".
func clean(name string) (string, error) {
	c := path.Clean(strings.TrimLeft(name, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%q climbs out of the root: %w", name, ErrUnsafePath)
	}
	return c, nil
}

// resolveParent returns the host path of name's parent directory, with
// symlinks resolved inside a.dir, creating it (0755, as Docker does) if
// missing.
func (a *applier) resolveParent(name string) (string, error) {
	p, err := securejoin.SecureJoin(a.dir, path.Dir(name))
	if err != nil {
		return "", fmt.Errorf("resolve parent: %w", err)
	}
	if !within(a.dir, p) {
		return "", fmt.Errorf("parent resolves to %s: %w", p, ErrUnsafePath)
	}
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(p, 0o755); err != nil {
			return "", fmt.Errorf("create parent: %w", err)
		}
	case err != nil:
		return "", fmt.Errorf("stat parent: %w", err)
	case !fi.IsDir():
		return "", fmt.Errorf("parent %s is not a directory", path.Dir(name))
	}
	return p, nil
}

func within(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

func (a *applier) entry(hdr *tar.Header, r io.Reader) error {
	name, err := clean(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		// The root's own entry: its metadata belongs to whoever made dir.
		return nil
	}
	base := path.Base(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return a.whiteout(name, base)
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink, tar.TypeLink,
		tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}

	parent, err := a.resolveParent(name)
	if err != nil {
		return err
	}
	target := filepath.Join(parent, base)
	a.added[name] = true

	// Never follow the last component: replace whatever is there, except
	// that an existing directory stays (keeping lower contents) when the
	// entry is a directory too.
	if fi, err := os.Lstat(target); err == nil {
		if !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if err := os.RemoveAll(target); err != nil {
				return fmt.Errorf("replace existing: %w", err)
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stat: %w", err)
	}

	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("mkdir: %w", err)
		}
	case tar.TypeReg: // tar.Reader already maps the old TypeRegA here
		if err := writeFile(target, r); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
	case tar.TypeLink:
		// A hardlink shares the inode and so the metadata of its target.
		return a.hardlink(hdr.Linkname, target)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		kind := uint32(unix.S_IFIFO)
		if hdr.Typeflag == tar.TypeChar {
			kind = unix.S_IFCHR
		} else if hdr.Typeflag == tar.TypeBlock {
			kind = unix.S_IFBLK
		}
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknod(target, kind|mode, int(dev)); err != nil {
			if errors.Is(err, unix.EPERM) && hdr.Typeflag != tar.TypeFifo {
				delete(a.added, name)
				return nil
			}
			return fmt.Errorf("mknod: %w", err)
		}
	}
	return a.metadata(hdr, target)
}

func writeFile(target string, r io.Reader) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("create file: %w", err)
	}
	if _, err := io.Copy(f, r); err != nil {
		_ = f.Close()
		return fmt.Errorf("write file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close file: %w", err)
	}
	return nil
}

func (a *applier) hardlink(linkname, target string) error {
	ln, err := clean(linkname)
	if err != nil {
		return fmt.Errorf("hardlink target: %w", err)
	}
	if ln == "." {
		return fmt.Errorf("hardlink to the root: %w", ErrUnsafePath)
	}
	parent, err := securejoin.SecureJoin(a.dir, path.Dir(ln))
	if err != nil {
		return fmt.Errorf("resolve hardlink target: %w", err)
	}
	src := filepath.Join(parent, path.Base(ln))
	if !within(a.dir, src) {
		return fmt.Errorf("hardlink target %q: %w", linkname, ErrUnsafePath)
	}
	fi, err := os.Lstat(src)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("hardlink to directory %q: %w", linkname, ErrUnsafePath)
	}
	// link(2) does not follow a symlink src, so this cannot reach out of dir.
	if err := os.Link(src, target); err != nil {
		return fmt.Errorf("hardlink: %w", err)
	}
	return nil
}

// metadata restores owner, mode, xattrs and times. chown comes before
// chmod because chown clears setuid/setgid.
func (a *applier) metadata(hdr *tar.Header, target string) error {
	if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Fchmodat(unix.AT_FDCWD, target, uint32(hdr.Mode&0o7777), 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if strings.HasPrefix(attr, overlayXattrPrefix) {
			// A layer must not steer overlayfs (opaque dirs, redirects to
			// other paths): only whiteout entries may do that.
			continue
		}
		if err := unix.Lsetxattr(target, attr, []byte(v), 0); err != nil &&
			!errors.Is(err, unix.ENOTSUP) && !errors.Is(err, unix.EPERM) {
			return fmt.Errorf("set xattr %s: %w", attr, err)
		}
	}
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	if hdr.Typeflag == tar.TypeDir {
		// Writing children would bump the mtime again; set it at the end.
		a.dirTimes = append(a.dirTimes, dirTime{path: target, atime: atime, mtime: hdr.ModTime})
		return nil
	}
	return setTimes(target, atime, hdr.ModTime)
}

func setTimes(p string, atime, mtime time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}
