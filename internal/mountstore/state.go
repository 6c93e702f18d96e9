package mountstore

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// State is what a runner remembers of a mount directory between builds:
// for each regular file, the stat it had when it was last restored or
// saved and the digests of its chunks. A file whose stat still matches is
// not read again. It is local knowledge, never stored in a cache.
type State struct {
	Files map[string]FileState `json:"files"`
}

// FileState is one file's stat and chunks.
type FileState struct {
	Size   int64       `json:"size"`
	MTime  int64       `json:"mtime"`
	CTime  int64       `json:"ctime"`
	Ino    uint64      `json:"ino"`
	Chunks []ChunkName `json:"chunks"`
}

// ChunkName names a chunk by its bytes, wherever it is stored.
type ChunkName struct {
	Digest digest.Digest `json:"digest"`
	Size   int64         `json:"size"`
}

func statOf(st *unix.Stat_t) FileState {
	return FileState{Size: st.Size, MTime: st.Mtim.Nano(), CTime: st.Ctim.Nano(), Ino: st.Ino}
}

// matches reports whether st is the stat f was recorded with. The change
// time moves on every write and every chmod, and cannot be set back.
func (f FileState) matches(st *unix.Stat_t) bool {
	return f.Size == st.Size && f.MTime == st.Mtim.Nano() && f.CTime == st.Ctim.Nano() && f.Ino == st.Ino
}

// ReadState reads a state file; a missing or unreadable one is an empty
// state (it only ever saves work).
func ReadState(path string) *State {
	s := &State{Files: map[string]FileState{}}
	b, err := os.ReadFile(path)
	if err != nil {
		return s
	}
	if json.Unmarshal(b, s) != nil || s.Files == nil {
		return &State{Files: map[string]FileState{}}
	}
	return s
}

// WriteState writes s to path atomically.
func WriteState(path string, s *State) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-")
	if err != nil {
		return err
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// RemoveState removes a state file, if there is one.
func RemoveState(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
