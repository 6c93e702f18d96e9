package snapshot

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
	"github.com/kiln-build/kiln/internal/ownership"
)

// ErrUnsafePath is returned (wrapped) for a tar entry that would write or
// link outside the target directory.
var ErrUnsafePath = errors.New("unsafe path in layer")

// Apply extracts one uncompressed layer tar stream into dir, honouring OCI
// whiteouts: ".wh.<name>" removes <name> of lower layers, and
// "<d>/.wh..wh..opq" removes everything in <d> that lower layers put there.
// Whiteouts never remove what this same layer adds, whatever order the tar
// lists them in.
//
// Modes (with setuid, setgid, sticky), numeric owners, mtimes (of symlinks
// too) and "SCHILY.xattr." extended attributes are restored; a directory's
// mtime is set after its children are written. Device nodes are created
// as containerd does, and skipped in a user namespace, where the kernel
// refuses them, as Docker does in rootless mode. Directories are resolved through an archive.Root,
// so a tree nested thousands deep extracts in linear time.
func Apply(ctx context.Context, dir string, r io.Reader) error {
	return apply(ctx, &applier{added: map[string]bool{}}, dir, r)
}

func apply(ctx context.Context, a *applier, dir string, r io.Reader) error {
	root, err := archive.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("apply layer: %w", err)
	}
	defer root.Close()
	a.root = root
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

type applier struct {
	root *archive.Root
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

type dirTime struct {
	name         string // cleaned layer name
	atime, mtime time.Time
}

// clean makes a tar name relative and clean, refusing "..".
func clean(name string) (string, error) {
	c, err := archive.Clean(name)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnsafePath, err)
	}
	return c, nil
}

// parent returns a descriptor of name's parent directory, symlinks
// resolved inside the root, creating it (0755, as Docker does) if missing.
// It is valid until the next call on a.root.
func (a *applier) parent(name string) (int, error) {
	fd, _, err := a.root.Dir(path.Dir(name), true)
	if err != nil {
		return -1, fmt.Errorf("parent: %w", err)
	}
	return fd, nil
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
	kind, hidden, err := archive.ParseWhiteout(name)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsafePath, err)
	}
	switch kind {
	case archive.Opaque:
		a.opaques = append(a.opaques, hidden)
		return nil
	case archive.Whiteout:
		// Removal waits until the whole layer is read: the tar may list
		// the layer's own additions after it, and those must survive.
		a.whiteouts = append(a.whiteouts, hidden)
		return nil
	case archive.Meta:
		// AUFS bookkeeping (hardlink directories), not content; Docker
		// skips them as well.
		return nil
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeDir, tar.TypeReg, tar.TypeSymlink, tar.TypeLink,
		tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		return fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	var link *linkSource
	if hdr.Typeflag == tar.TypeLink {
		// Resolved first: the parent's descriptor is only valid until
		// the next resolution.
		if link, err = a.linkSource(hdr.Linkname); err != nil {
			return err
		}
		defer unix.Close(link.fd)
	}
	parent, err := a.parent(name)
	if err != nil {
		return err
	}
	base := path.Base(name)
	a.added[name] = true
	if (hdr.Typeflag == tar.TypeChar || hdr.Typeflag == tar.TypeBlock) && archive.SkipDevice(hdr) {
		// Not created, but it still replaces what was there.
		delete(a.added, name)
		_, _, err := a.replace(hdr, name, parent, base)
		return err
	}

	// Create first and look only when the name is taken (a lower layer's
	// entry, a repeat in this tar, a parent made implicitly): a fresh
	// layer directory costs no stat per entry. Every create below fails
	// with EEXIST before it has any effect (O_EXCL, mkdirat, symlinkat,
	// linkat, mknodat), so retrying after the replacement is safe.
	err = a.create(hdr, parent, base, r, link)
	if errors.Is(err, unix.EEXIST) {
		var keep bool
		if parent, keep, err = a.replace(hdr, name, parent, base); err == nil && !keep {
			err = a.create(hdr, parent, base, r, link)
		}
	}
	if err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeLink {
		// A hardlink shares the inode and so the metadata of its target.
		return nil
	}
	return a.metadata(hdr, parent, base, name)
}

// replace removes what is at base in parent (the entry name), never
// following it, unless it is a directory and the entry is one too: then
// keep is true and the directory stays, with its lower contents. It
// returns the parent's descriptor, resolved again if anything was removed.
func (a *applier) replace(hdr *tar.Header, name string, parent int, base string) (int, bool, error) {
	var st unix.Stat_t
	err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
		return parent, false, nil
	case err != nil:
		return -1, false, fmt.Errorf("stat: %w", err)
	case st.Mode&unix.S_IFMT == unix.S_IFDIR && hdr.Typeflag == tar.TypeDir:
		return parent, true, nil
	}
	if err := os.RemoveAll(archive.ProcPath(parent, base)); err != nil {
		return -1, false, fmt.Errorf("replace existing: %w", err)
	}
	a.root.Invalidate(path.Dir(name))
	parent, err = a.parent(name)
	return parent, false, err
}

// create makes the entry's object as base in parent; its error wraps
// EEXIST, with nothing done, when the name is taken.
func (a *applier) create(hdr *tar.Header, parent int, base string, r io.Reader, link *linkSource) error {
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(parent, base, 0o700); err != nil {
			return fmt.Errorf("mkdir: %w", err)
		}
	case tar.TypeReg: // tar.Reader already maps the old TypeRegA here
		return writeFile(parent, base, r, archive.IsSparse(hdr))
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, parent, base); err != nil {
			return fmt.Errorf("symlink: %w", err)
		}
	case tar.TypeLink:
		// linkat(2) does not follow a symlink source, so this cannot
		// reach out of the root.
		if err := unix.Linkat(link.fd, link.base, parent, base, 0); err != nil {
			return fmt.Errorf("hardlink: %w", err)
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return archive.Mknodat(parent, base, hdr, mode)
	}
	return nil
}

func writeFile(dir int, base string, r io.Reader, sparse bool) error {
	fd, err := unix.Openat(dir, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create file: %w", err)
	}
	if sparse {
		f := os.NewFile(uintptr(fd), base)
		_, err = archive.WriteSparse(f, r)
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
	} else {
		// Plain write(2)s on the descriptor: os.NewFile costs an fcntl
		// per file, and a file has nothing to gain from the poller.
		buf := copyBufs.Get().(*[]byte)
		_, err = io.CopyBuffer(fdWriter(fd), r, *buf)
		copyBufs.Put(buf)
		if cerr := unix.Close(fd); err == nil && cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("write file: %w", err)
	}
	return nil
}

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

// fdWriter writes to a file descriptor, retrying short writes.
type fdWriter int

func (w fdWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(int(w), p[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return n, err
		}
		n += m
	}
	return n, nil
}

type linkSource struct {
	fd   int // a descriptor of its own for the target's directory
	base string
}

// linkSource resolves a hardlink target inside the root, the last
// component not followed; it must be an existing non-directory.
func (a *applier) linkSource(linkname string) (*linkSource, error) {
	ln, err := clean(linkname)
	if err != nil {
		return nil, fmt.Errorf("hardlink target: %w", err)
	}
	if ln == "." {
		return nil, fmt.Errorf("hardlink to the root: %w", ErrUnsafePath)
	}
	fd, _, err := a.root.Dir(path.Dir(ln), false)
	if err != nil {
		return nil, fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	base := path.Base(ln)
	var st unix.Stat_t
	if err := unix.Fstatat(fd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil, fmt.Errorf("hardlink to directory %q: %w", linkname, ErrUnsafePath)
	}
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("hardlink target: %w", err)
	}
	unix.CloseOnExec(dup)
	return &linkSource{fd: dup, base: base}, nil
}

// metadata restores owner, mode, xattrs and times of base in the directory
// dir. chown comes before chmod because chown clears setuid/setgid.
func (a *applier) metadata(hdr *tar.Header, dir int, base, name string) error {
	if err := ownership.Fchownat(dir, base, hdr.Uid, hdr.Gid); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Fchmodat(dir, base, uint32(hdr.Mode&0o7777), 0); err != nil {
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
		if err := unix.Lsetxattr(archive.ProcPath(dir, base), attr, []byte(v), 0); err != nil &&
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
		a.dirTimes = append(a.dirTimes, dirTime{name: name, atime: atime, mtime: hdr.ModTime})
		return nil
	}
	return setTimes(dir, base, atime, hdr.ModTime)
}

func setTimes(dir int, base string, atime, mtime time.Time) error {
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if err := unix.UtimesNanoAt(dir, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}
