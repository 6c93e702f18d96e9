package snapshot

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
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
	var newest int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return &fs.PathError{Op: "lstat", Path: p, Err: err}
		}
		if c := st.Ctim.Nano(); c > newest {
			newest = c
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		s := fileState{
			mode: st.Mode, uid: st.Uid, gid: st.Gid, size: st.Size,
			mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano(), ino: st.Ino, rdev: uint64(st.Rdev),
		}
		if d.Type()&fs.ModeSymlink != 0 {
			if s.link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		out[filepath.ToSlash(rel)] = s
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("index %s: %w", root, err)
	}
	return out, newest, nil
}
