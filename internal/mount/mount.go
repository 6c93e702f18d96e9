// Package mount describes filesystem mounts as data and performs them.
// Snapshotters return []Mount and never mount anything themselves; the
// solver (for COPY) or an executor (for RUN) mounts them, so fakes are
// trivial and the overlay and copy snapshotters share one contract. The
// shape follows containerd's mount.Mount.
package mount

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Mount is one mount: Type is the filesystem type ("overlay", "bind",
// "tmpfs", "proc"), Source what is mounted, Options either mount flags
// ("ro", "rbind", "nosuid", ...) or filesystem data ("lowerdir=...").
type Mount struct {
	Type    string   `json:"type"`
	Source  string   `json:"source"`
	Options []string `json:"options,omitempty"`
}

// flags maps option words to mount flags; clear says the word removes the
// flag instead of setting it.
var flags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"async":       {true, unix.MS_SYNCHRONOUS},
	"atime":       {true, unix.MS_NOATIME},
	"bind":        {false, unix.MS_BIND},
	"defaults":    {false, 0},
	"dev":         {true, unix.MS_NODEV},
	"diratime":    {true, unix.MS_NODIRATIME},
	"dirsync":     {false, unix.MS_DIRSYNC},
	"exec":        {true, unix.MS_NOEXEC},
	"mand":        {false, unix.MS_MANDLOCK},
	"noatime":     {false, unix.MS_NOATIME},
	"nodev":       {false, unix.MS_NODEV},
	"nodiratime":  {false, unix.MS_NODIRATIME},
	"noexec":      {false, unix.MS_NOEXEC},
	"nosuid":      {false, unix.MS_NOSUID},
	"rbind":       {false, unix.MS_BIND | unix.MS_REC},
	"relatime":    {false, unix.MS_RELATIME},
	"ro":          {false, unix.MS_RDONLY},
	"rw":          {true, unix.MS_RDONLY},
	"strictatime": {false, unix.MS_STRICTATIME},
	"suid":        {true, unix.MS_NOSUID},
	"sync":        {false, unix.MS_SYNCHRONOUS},
}

// parse splits options into mount flags and the filesystem data string.
func parse(options []string) (uintptr, string) {
	var flag uintptr
	var data []string
	for _, o := range options {
		if f, ok := flags[o]; ok {
			if f.clear {
				flag &^= f.flag
			} else {
				flag |= f.flag
			}
			continue
		}
		data = append(data, o)
	}
	return flag, strings.Join(data, ",")
}

// Mount mounts m at target. A read-only bind mount needs a second,
// remounting call: the kernel ignores MS_RDONLY on the first.
func (m Mount) Mount(target string) error {
	flag, data := parse(m.Options)
	typ := m.Type
	if flag&unix.MS_BIND != 0 {
		typ = ""
	}
	if err := unix.Mount(m.Source, target, typ, flag, data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", m.Source, m.Type, target, err)
	}
	if flag&unix.MS_BIND != 0 && flag&unix.MS_RDONLY != 0 {
		remount := flag | unix.MS_REMOUNT
		if err := unix.Mount("", target, "", remount, ""); err != nil {
			_ = Unmount(target)
			return fmt.Errorf("remount %s read-only: %w", target, err)
		}
	}
	return nil
}

// All mounts ms in order at target (later mounts stack on earlier ones);
// on failure it unmounts what it mounted.
func All(ms []Mount, target string) error {
	for i, m := range ms {
		if err := m.Mount(target); err != nil {
			for j := 0; j < i; j++ {
				_ = Unmount(target)
			}
			return err
		}
	}
	return nil
}

// Unmount unmounts target, retrying briefly while it is busy and then
// detaching it lazily, so cleanup after a killed process never leaves a
// mount behind. Unmounting something not mounted is not an error.
func Unmount(target string) error {
	for i := 0; i < 50; i++ {
		err := unix.Unmount(target, 0)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not a mount point (any more)
		case errors.Is(err, unix.EBUSY):
			time.Sleep(10 * time.Millisecond)
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
	if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

// UnmountAll unmounts everything mounted at or below dir, deepest first.
func UnmountAll(dir string) error {
	mps, err := MountPointsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, mp := range mps {
		if err := Unmount(mp); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// IsMountPoint reports whether target is listed in /proc/self/mountinfo
// (which, unlike comparing devices, also sees bind mounts).
func IsMountPoint(target string) (bool, error) {
	info, err := mountinfo()
	if err != nil {
		return false, err
	}
	for _, mp := range info {
		if mp == target {
			return true, nil
		}
	}
	return false, nil
}
