package buildctx

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"sync"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// ErrChanged is returned when a context file is not what Files hashed by
// the time COPY reads it: its cache key would not describe the layer.
var ErrChanged = errors.New("changed while the build was reading it")

// identity is what lstat said of a selected entry when it was hashed. Any
// write, truncation, chmod, chown or replacement changes one of these (a
// write changes ctime even when it restores mtime), so a COPY that sees the
// same identity reads the bytes that were hashed, without hashing them
// again.
type identity struct {
	mode         uint32 // type and permission bits
	size         int64
	ino, dev     uint64
	mtime, ctime int64 // ns
}

func identityOf(st *unix.Stat_t) identity {
	return identity{mode: st.Mode, size: st.Size, ino: st.Ino, dev: st.Dev,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
}

func identityOfSys(st *syscall.Stat_t) identity {
	return identity{mode: st.Mode, size: st.Size, ino: st.Ino, dev: uint64(st.Dev),
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
}

// same compares two identities. A directory is compared on type,
// permissions and inode only: its size and times change whenever any name
// in it is created or removed, an ignored editor swap file included, and
// what COPY takes from beneath it is checked entry by entry.
func (a identity) same(b identity) bool {
	if a.mode&unix.S_IFMT == unix.S_IFDIR && b.mode&unix.S_IFMT == unix.S_IFDIR {
		return a.mode == b.mode && a.ino == b.ino && a.dev == b.dev
	}
	return a == b
}

// Snapshot is the identity of every entry one Files call hashed, keyed by
// context-relative path, so the COPY that reads them later can check that it
// copies exactly what its cache key describes (Check, then Missing). The zero
// Snapshot holds nothing: every entry checked against it has changed, as
// for a COPY whose hashing failed (a file removed while it was walked).
type Snapshot struct {
	root string
	ids  map[string]identity

	mu   sync.Mutex
	seen map[string]bool
}

// Check reports ErrChanged unless st, a stat of the context entry rel
// (slash-separated, context-relative, named as the COPY source names it) taken
// while copying it, is the entry that was hashed. An entry that was not hashed
// (it appeared since) is changed too.
func (s *Snapshot) Check(rel string, st *unix.Stat_t) error {
	want, ok := s.ids[rel]
	if !ok || !want.same(identityOf(st)) {
		return changed(rel)
	}
	s.mu.Lock()
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	s.seen[rel] = true
	s.mu.Unlock()
	return nil
}

// Missing reports ErrChanged for a hashed entry that the copy never checked
// and that no longer exists: it disappeared between hashing and copying. A
// hashed entry that still exists was skipped on purpose (COPY --exclude).
// An entry COPY --exclude skips and that is removed in between fails too:
// the snapshot cannot tell it from one the copy missed, and a rerun, which
// hashes it no more, succeeds.
func (s *Snapshot) Missing() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for rel := range s.ids {
		if s.seen[rel] {
			continue
		}
		if !s.exists(rel) {
			gone = append(gone, rel)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	sort.Strings(gone)
	return changed(gone[0])
}

// exists lstats rel without following its last component, as the hashing
// walk saw it (a dangling symlink exists).
func (s *Snapshot) exists(rel string) bool {
	if rel == "" {
		return true
	}
	dir, err := securejoin.SecureJoin(s.root, filepath.FromSlash(path.Dir(rel)))
	if err != nil {
		return false
	}
	_, err = os.Lstat(filepath.Join(dir, path.Base(rel)))
	return !errors.Is(err, fs.ErrNotExist)
}

func changed(rel string) error {
	name := rel
	if name == "" {
		name = "."
	}
	return fmt.Errorf("context file %q %w; nothing was cached (run the build again)", name, ErrChanged)
}
