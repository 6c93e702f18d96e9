// Package ownership is where kiln sets and reads the owners of files it puts
// into root filesystems, so a build run by an unprivileged user (which may
// not chown) still records the owners the image needs.
//
// As root, Lchown and Fchownat are the system calls and Of is the stat's
// owner. Unprivileged, a refused chown (EPERM) records the owner in the
// extended attribute "user.kiln.owner" instead, and Of reads it back; a
// file kiln's own user owns without one is taken as root's (0:0), the
// owner it would have had. A symlink cannot carry a user attribute: its
// owner is kept in memory by inode instead, which serves the layers one
// kiln process writes (a symlink extracted or copied by an earlier process
// reads as root's). The attribute is never written into a layer.
package ownership

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// xattr holds "uid:gid" where a chown was refused.
const xattr = "user.kiln.owner"

// privileged is whether chown works: kiln runs as root.
var privileged = os.Geteuid() == 0

// Lchown sets path's owner (not following a last symlink), or records it
// when kiln may not.
func Lchown(path string, uid, gid int) error {
	err := os.Lchown(path, uid, gid)
	if err == nil || !errors.Is(err, unix.EPERM) || privileged {
		return err
	}
	return record(path, uid, gid)
}

// Fchownat is Lchown for name in the directory open as dirfd.
func Fchownat(dirfd int, name string, uid, gid int) error {
	err := unix.Fchownat(dirfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil || !errors.Is(err, unix.EPERM) || privileged {
		return err
	}
	return record(fdPath(dirfd, name), uid, gid)
}

// inode names a file for symlinks' owners, which live in memory.
type inode struct{ dev, ino uint64 }

// symlinks maps an inode to the [2]int owner recorded for a symlink.
var symlinks sync.Map

func record(path string, uid, gid int) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("record owner %d:%d (chown is not permitted): %w", uid, gid, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		symlinks.Store(inode{st.Dev, st.Ino}, [2]int{uid, gid})
		return nil
	}
	v := []byte(strconv.Itoa(uid) + ":" + strconv.Itoa(gid))
	if err := unix.Lsetxattr(path, xattr, v, 0); err != nil {
		return fmt.Errorf("record owner %d:%d (chown is not permitted): %w", uid, gid, err)
	}
	return nil
}

// Of is the owner to record for the file name in the directory open as
// dirfd, whose lstat is st.
func Of(dirfd int, name string, st *unix.Stat_t) (uid, gid int) {
	if privileged {
		return int(st.Uid), int(st.Gid)
	}
	return of(fdPath(dirfd, name), st)
}

// OfPath is Of for a path.
func OfPath(path string, st *unix.Stat_t) (uid, gid int) {
	if privileged {
		return int(st.Uid), int(st.Gid)
	}
	return of(path, st)
}

func of(path string, st *unix.Stat_t) (int, int) {
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		if o, ok := symlinks.Load(inode{st.Dev, st.Ino}); ok {
			return o.([2]int)[0], o.([2]int)[1]
		}
	} else if o, ok := fromXattr(path); ok {
		return o[0], o[1]
	}
	if int(st.Uid) == os.Geteuid() {
		// Made by this unprivileged kiln without a recorded owner: root's.
		return 0, 0
	}
	return int(st.Uid), int(st.Gid)
}

func fromXattr(path string) ([2]int, bool) {
	buf := make([]byte, 32)
	if n, err := unix.Lgetxattr(path, xattr, buf); err == nil {
		u, g, ok := strings.Cut(string(buf[:n]), ":")
		uid, uerr := strconv.Atoi(u)
		gid, gerr := strconv.Atoi(g)
		if ok && uerr == nil && gerr == nil {
			return [2]int{uid, gid}, true
		}
	}
	return [2]int{}, false
}

// fdPath names name in the directory open as dirfd for the path-based
// xattr calls (there is no *at form).
func fdPath(dirfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}

// Forget removes the owners recorded beneath root, for a tree that leaves
// kiln (a type=local output): there the files simply belong to the user
// who ran it, as with rootless BuildKit. Nothing to do as root.
func Forget(root string) error {
	if privileged {
		return nil
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		if err := unix.Lremovexattr(p, xattr); err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("forget recorded owner of %s: %w", p, err)
		}
		return nil
	})
}
