package snapshot

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
)

// fileState is what the copy snapshotter remembers of one path to tell
// whether a step changed it. ctime moves on any content or metadata
// change (and cannot be set back by the step); ino catches a file
// replaced by rename, as editors and sed -i do.
type fileState struct {
	mode         uint32 // type and permission bits
	uid, gid     uint32
	size         int64
	mtime, ctime int64 // ns
	ino, rdev    uint64
	link         string
}

func (s fileState) isDir() bool { return s.mode&unix.S_IFMT == unix.S_IFDIR }

// index walks root and records every path below it, slash-separated and
// relative, and the newest ctime seen.
func index(ctx context.Context, root string) (map[string]fileState, int64, error) {
	out := map[string]fileState{}
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		return nil, 0, fmt.Errorf("index %s: %w", root, err)
	}
	newest := st.Ctim.Nano()
	// Through descriptors: a tree nested thousands deep costs linear time.
	err := archive.Walk(ctx, root, func(e *archive.Entry) error {
		st := &e.Stat
		if c := st.Ctim.Nano(); c > newest {
			newest = c
		}
		s := fileState{
			mode: st.Mode, uid: st.Uid, gid: st.Gid, size: st.Size,
			mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(), ino: st.Ino, rdev: uint64(st.Rdev),
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			var err error
			if s.link, err = archive.Readlink(e.Dir, e.Name); err != nil {
				return fmt.Errorf("readlink /%s: %w", e.Rel, err)
			}
		}
		out[e.Rel] = s
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("index %s: %w", root, err)
	}
	return out, newest, nil
}
