package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
)

const (
	overlayXattrPrefix = "trusted.overlay."
	overlayOpaqueXattr = "trusted.overlay.opaque"
)

// ApplyOverlay extracts one uncompressed layer tar stream into dir (which
// should be empty) in overlayfs form, for use as one lowerdir of an overlay
// mount: ".wh.NAME" becomes a 0/0 character device NAME, and
// "DIR/.wh..wh..opq" becomes the xattr trusted.overlay.opaque=y on DIR. A
// whiteout of a name this same layer re-creates as a directory makes that
// directory opaque, which is what the OCI rules mean by it.
//
// It has Apply's safety: no entry reaches outside dir. Two differences
// follow from extracting a layer alone rather than over its parents: a
// hardlink must point at a file of the same layer (else the error wraps
// os.ErrNotExist), and a symlinked directory of a lower layer is not
// followed by a later layer's entries beneath it (like Docker's overlay2).
// Parents that the tar omits are created 0755 root-owned.
func ApplyOverlay(ctx context.Context, dir string, r io.Reader) error {
	if err := apply(ctx, &applier{added: map[string]bool{}, overlay: true}, dir, r); err != nil {
		return fmt.Errorf("overlay form: %w", err)
	}
	return nil
}

// overlayMarkers writes the deferred whiteouts and opaque markers as
// overlayfs understands them.
func (a *applier) overlayMarkers(keep map[string]bool) error {
	for _, w := range a.whiteouts {
		if keep[w] {
			// Deleted and re-created in this layer: a directory must
			// hide what lower layers had in it; a file hides it anyway.
			dir, base, ok, err := a.at(w)
			if err != nil {
				return fmt.Errorf("whiteout %s: %w", w, err)
			}
			var st unix.Stat_t
			if ok && unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if err := setOpaque(archive.ProcPath(dir, base)); err != nil {
					return fmt.Errorf("whiteout %s: %w", w, err)
				}
			}
			continue
		}
		parent, err := a.parent(w)
		if err != nil {
			return fmt.Errorf("whiteout %s: %w", w, err)
		}
		if err := mkWhiteoutAt(parent, path.Base(w)); err != nil {
			return fmt.Errorf("whiteout %s: %w", w, err)
		}
	}
	for _, o := range a.opaques {
		if o != "." {
			parent, err := a.parent(o)
			if err != nil {
				return fmt.Errorf("opaque directory %s: %w", o, err)
			}
			var st unix.Stat_t
			err = unix.Fstatat(parent, path.Base(o), &st, unix.AT_SYMLINK_NOFOLLOW)
			switch {
			case errors.Is(err, unix.ENOENT):
				if err := unix.Mkdirat(parent, path.Base(o), 0o755); err != nil {
					return fmt.Errorf("opaque directory %s: %w", o, err)
				}
			case err != nil:
				return fmt.Errorf("opaque directory %s: %w", o, err)
			case st.Mode&unix.S_IFMT != unix.S_IFDIR:
				// The layer replaced the directory by a file: nothing to hide.
				continue
			}
		}
		fd, _, err := a.root.Dir(o, false)
		if err != nil {
			return fmt.Errorf("opaque directory %s: %w", o, err)
		}
		if err := unix.Fsetxattr(fd, overlayOpaqueXattr, []byte("y"), 0); err != nil {
			return fmt.Errorf("opaque directory %s: set %s: %w", o, overlayOpaqueXattr, err)
		}
	}
	return nil
}

func setOpaque(dir string) error {
	if err := unix.Lsetxattr(dir, overlayOpaqueXattr, []byte("y"), 0); err != nil {
		return fmt.Errorf("set %s: %w", overlayOpaqueXattr, err)
	}
	return nil
}

// isOpaque reports whether dir carries overlayfs' opaque marker.
func isOpaque(dir string) (bool, error) {
	b := make([]byte, 8)
	n, err := unix.Lgetxattr(dir, overlayOpaqueXattr, b)
	switch {
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read %s of %s: %w", overlayOpaqueXattr, dir, err)
	}
	return string(b[:n]) == "y", nil
}

// isOpaqueFD is isOpaque for an open directory.
func isOpaqueFD(fd int) (bool, error) {
	b := make([]byte, 8)
	n, err := unix.Fgetxattr(fd, overlayOpaqueXattr, b)
	switch {
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.ENOTSUP):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("read %s: %w", overlayOpaqueXattr, err)
	}
	return string(b[:n]) == "y", nil
}

// mkWhiteoutAt creates overlayfs' whiteout, a 0/0 character device, as
// base in the directory dir. A repeated whiteout of the same name is
// harmless.
func mkWhiteoutAt(dir int, base string) error {
	err := unix.Mknodat(dir, base, unix.S_IFCHR, 0)
	if errors.Is(err, unix.EEXIST) {
		var st unix.Stat_t
		if unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("create whiteout device: %w", err)
	}
	return nil
}

// isWhiteout reports whether p is an overlayfs whiteout.
func isWhiteout(p string) bool {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}
