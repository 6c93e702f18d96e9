package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
)

// whiteout records a whiteout entry. Removal waits until the whole layer is
// read, because the tar may list the layer's own additions after it and
// those must survive.
func (a *applier) whiteout(name, base string) error {
	switch {
	case base == whiteoutOpaque:
		a.opaques = append(a.opaques, path.Dir(name))
	case strings.HasPrefix(base, whiteoutMeta):
		// Other ".wh..wh." names are AUFS bookkeeping (hardlink
		// directories), not content; Docker skips them as well.
	default:
		hidden := strings.TrimPrefix(base, whiteoutPrefix)
		if hidden == "" || hidden == "." || hidden == ".." {
			return fmt.Errorf("whiteout %q names no file: %w", name, ErrUnsafePath)
		}
		a.whiteouts = append(a.whiteouts, path.Join(path.Dir(name), hidden))
	}
	return nil
}

// finish applies the deferred whiteouts, then directory times, whose
// mtimes removals would otherwise bump.
func (a *applier) finish() error {
	keep := make(map[string]bool, 2*len(a.added))
	for n := range a.added {
		for ; n != "."; n = path.Dir(n) {
			if keep[n] {
				break
			}
			keep[n] = true
		}
	}
	if a.overlay {
		if err := a.overlayMarkers(keep); err != nil {
			return err
		}
		return a.setDirTimes()
	}
	for _, w := range a.whiteouts {
		p, err := a.resolve(w)
		if err != nil {
			return fmt.Errorf("whiteout %s: %w", w, err)
		}
		if !keep[w] {
			if err := os.RemoveAll(p); err != nil {
				return fmt.Errorf("whiteout %s: %w", w, err)
			}
			continue
		}
		// Deleted and re-created in this layer: the new one replaces the
		// old one entirely, so lower contents of a directory go too.
		if err := a.hideLower(w, p, keep); err != nil {
			return err
		}
	}
	for _, o := range a.opaques {
		p, err := a.resolve(o)
		if err != nil {
			return fmt.Errorf("opaque directory %s: %w", o, err)
		}
		if err := a.hideLower(o, p, keep); err != nil {
			return err
		}
	}
	return a.setDirTimes()
}

// setDirTimes restores directory times, innermost last-written first.
func (a *applier) setDirTimes() error {
	for i := len(a.dirTimes) - 1; i >= 0; i-- {
		d := a.dirTimes[i]
		if err := setTimes(d.path, d.atime, d.mtime); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("directory %s: %w", d.path, err)
		}
	}
	return nil
}

// resolve maps a cleaned layer name to its host path: parents resolved
// inside a.dir, the last component not followed.
func (a *applier) resolve(name string) (string, error) {
	if name == "." {
		return a.dir, nil
	}
	parent, err := securejoin.SecureJoin(a.dir, path.Dir(name))
	if err != nil {
		return "", fmt.Errorf("resolve: %w", err)
	}
	p := filepath.Join(parent, path.Base(name))
	if !within(a.dir, p) {
		return "", fmt.Errorf("%s resolves outside the root: %w", name, ErrUnsafePath)
	}
	return p, nil
}

// hideLower removes everything under directory name (host path p) that this
// layer did not write, recursing into directories that hold additions.
func (a *applier) hideLower(name, p string, keep map[string]bool) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) || (err == nil && !fi.IsDir()) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opaque %s: %w", name, err)
	}
	entries, err := os.ReadDir(p)
	if err != nil {
		return fmt.Errorf("opaque %s: %w", name, err)
	}
	for _, e := range entries {
		child := path.Join(name, e.Name())
		cp := filepath.Join(p, e.Name())
		if !keep[child] {
			if err := os.RemoveAll(cp); err != nil {
				return fmt.Errorf("opaque %s: %w", name, err)
			}
			continue
		}
		if e.IsDir() {
			if err := a.hideLower(child, cp, keep); err != nil {
				return err
			}
		}
	}
	return nil
}
