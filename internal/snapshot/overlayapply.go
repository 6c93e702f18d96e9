package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"
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
	if err := apply(ctx, &applier{dir: dir, added: map[string]bool{}, overlay: true}, r); err != nil {
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
			p, err := a.resolve(w)
			if err != nil {
				return fmt.Errorf("whiteout %s: %w", w, err)
			}
			if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
				if err := setOpaque(p); err != nil {
					return fmt.Errorf("whiteout %s: %w", w, err)
				}
			}
			continue
		}
		parent, err := a.resolveParent(w)
		if err != nil {
			return fmt.Errorf("whiteout %s: %w", w, err)
		}
		if err := mkWhiteout(filepath.Join(parent, path.Base(w))); err != nil {
			return fmt.Errorf("whiteout %s: %w", w, err)
		}
	}
	for _, o := range a.opaques {
		p, err := a.resolve(o)
		if err != nil {
			return fmt.Errorf("opaque directory %s: %w", o, err)
		}
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if _, err := a.resolveParent(path.Join(o, "x")); err != nil {
				return fmt.Errorf("opaque directory %s: %w", o, err)
			}
		case err != nil:
			return fmt.Errorf("opaque directory %s: %w", o, err)
		case !fi.IsDir():
			// The layer replaced the directory by a file: nothing to hide.
			continue
		}
		if err := setOpaque(p); err != nil {
			return fmt.Errorf("opaque directory %s: %w", o, err)
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

// mkWhiteout creates overlayfs' whiteout, a 0/0 character device. A
// repeated whiteout of the same name is harmless.
func mkWhiteout(p string) error {
	err := unix.Mknod(p, unix.S_IFCHR, 0)
	if errors.Is(err, unix.EEXIST) && isWhiteout(p) {
		return nil
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
