package archive

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// Entry is one file Walk visits.
type Entry struct {
	Rel  string // slash-separated, relative to the walked directory
	Dir  int    // descriptor of the directory holding it
	Name string // its name in Dir
	Stat unix.Stat_t
	// FD is the entry's own descriptor when it is a directory, else -1.
	FD int
}

// IsDir reports whether the entry is a directory.
func (e *Entry) IsDir() bool { return e.Stat.Mode&unix.S_IFMT == unix.S_IFDIR }

// ErrSkipDir, returned by a WalkFunc for a directory, skips its contents
// (for any other entry it is the same as nil).
var ErrSkipDir = errors.New("skip this directory")

// WalkFunc is called for every entry below the walked directory, parents
// before children, names in lexical order. The descriptors are valid only
// during the call.
type WalkFunc func(e *Entry) error

// Walk visits the tree below dir (not dir itself) through descriptors:
// each entry is stat'ed relative to its open parent, so a tree of any
// depth costs one step per entry and PATH_MAX never applies. Symlinks are
// not followed; entries removed while the walk runs are skipped.
func Walk(ctx context.Context, dir string, fn WalkFunc) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("walk %s: %w", dir, err)
	}
	defer unix.Close(fd)
	return walk(ctx, fd, "", fn)
}

func walk(ctx context.Context, fd int, rel string, fn WalkFunc) error {
	names, err := readNames(fd)
	if err != nil {
		return fmt.Errorf("read directory /%s: %w", rel, err)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		e := Entry{Rel: name, Dir: fd, Name: name, FD: -1}
		if rel != "" {
			e.Rel = rel + "/" + name
		}
		if err := unix.Fstatat(fd, name, &e.Stat, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
			continue // removed since the listing, by a concurrent writer
		} else if err != nil {
			return fmt.Errorf("stat /%s: %w", e.Rel, err)
		}
		if !e.IsDir() {
			if err := fn(&e); err != nil && !errors.Is(err, ErrSkipDir) {
				return err
			}
			continue
		}
		if e.FD, err = unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); errors.Is(err, unix.ENOENT) {
			continue
		} else if err != nil {
			return fmt.Errorf("open /%s: %w", e.Rel, err)
		}
		err := fn(&e)
		if err == nil {
			err = walk(ctx, e.FD, e.Rel, fn)
		} else if errors.Is(err, ErrSkipDir) {
			err = nil
		}
		_ = unix.Close(e.FD)
		if err != nil {
			return err
		}
	}
	return nil
}

// readNames lists the directory fd without consuming fd's offset for
// later readers.
func readNames(fd int) ([]string, error) {
	dup, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dup), ".")
	defer f.Close()
	return f.Readdirnames(-1)
}

// ProcPath names the entry name in the directory dirfd through
// /proc/self/fd, a short path for the calls that have no *at form
// (lsetxattr, os.RemoveAll). Use it while dirfd is open.
func ProcPath(dirfd int, name string) string {
	return fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, name)
}

// StatMode is st's mode as fs.FileMode, as os.Lstat would report it.
func StatMode(st *unix.Stat_t) fs.FileMode {
	m := fs.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	}
	if st.Mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if st.Mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if st.Mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// ReadNames lists the names in the open directory fd, unsorted.
func ReadNames(fd int) ([]string, error) { return readNames(fd) }
