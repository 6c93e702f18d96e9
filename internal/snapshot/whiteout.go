package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
)

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
		if !keep[w] {
			if err := a.removeAll(w); err != nil {
				return fmt.Errorf("whiteout %s: %w", w, err)
			}
			continue
		}
		// Deleted and re-created in this layer: the new one replaces the
		// old one entirely, so lower contents of a directory go too.
		if err := a.hideLower(w, keep); err != nil {
			return err
		}
	}
	for _, o := range a.opaques {
		if err := a.hideLower(o, keep); err != nil {
			return err
		}
	}
	return a.setDirTimes()
}

// at resolves name's parent without creating it; ok is false when the
// parent does not exist (so neither does name).
func (a *applier) at(name string) (dir int, base string, ok bool, err error) {
	fd, _, err := a.root.Dir(path.Dir(name), false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return -1, "", false, nil
	}
	if err != nil {
		return -1, "", false, err
	}
	return fd, path.Base(name), true, nil
}

// removeAll removes name (not following it) and everything below it.
func (a *applier) removeAll(name string) error {
	dir, base, ok, err := a.at(name)
	if err != nil || !ok {
		return err
	}
	if err := os.RemoveAll(archive.ProcPath(dir, base)); err != nil {
		return err
	}
	a.root.Invalidate(path.Dir(name))
	return nil
}

// setDirTimes restores directory times, innermost last-written first.
func (a *applier) setDirTimes() error {
	for i := len(a.dirTimes) - 1; i >= 0; i-- {
		d := a.dirTimes[i]
		dir, base, ok, err := a.at(d.name)
		if err == nil && ok {
			err = setTimes(dir, base, d.atime, d.mtime)
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("directory %s: %w", d.name, err)
		}
	}
	return nil
}

// hideLower removes everything under directory name that this layer did
// not write, recursing into directories that hold additions. A name that
// is not a directory (or a symlink to one) is left alone.
func (a *applier) hideLower(name string, keep map[string]bool) error {
	dir, base, ok, err := a.at(name)
	if err != nil || !ok {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) || (err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR) {
		return nil
	} else if err != nil {
		return fmt.Errorf("opaque %s: %w", name, err)
	}
	fd, _, err := a.root.Dir(name, false)
	if err != nil {
		return fmt.Errorf("opaque %s: %w", name, err)
	}
	names, err := archive.ReadNames(fd)
	if err != nil {
		return fmt.Errorf("opaque %s: %w", name, err)
	}
	slices.Sort(names)
	for _, n := range names {
		child := path.Join(name, n)
		if !keep[child] {
			if err := a.removeAll(child); err != nil {
				return fmt.Errorf("opaque %s: %w", name, err)
			}
			continue
		}
		if err := a.hideLower(child, keep); err != nil {
			return err
		}
	}
	return nil
}
