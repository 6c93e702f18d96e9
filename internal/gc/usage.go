package gc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
)

// Kind says what a stored thing is, for reports and prune output.
type Kind string

// The kinds kiln stores, by the directory under its root that holds them.
const (
	KindCache     Kind = "cache"     // cache records and layer blobs (cache/)
	KindImages    Kind = "images"    // the local image store (images/)
	KindSnapshots Kind = "snapshots" // extracted layers and active snapshots (snapshots/)
	KindMounts    Kind = "mounts"    // RUN --mount=type=cache contents (mounts/)
	KindOther     Kind = "other"     // everything else: locks, leases, run state, leftovers
)

// Kinds lists every kind in report order.
var Kinds = []Kind{KindCache, KindImages, KindSnapshots, KindMounts, KindOther}

func kindOf(top string) Kind {
	switch k := Kind(top); k {
	case KindCache, KindImages, KindSnapshots, KindMounts:
		return k
	}
	return KindOther
}

// Usage is what kiln's root holds on disk.
type Usage struct {
	// Total is allocated bytes, as `du -s` counts them: st_blocks, each
	// inode once however many hard links name it.
	Total int64
	// Kinds splits Total. A file linked from two kinds (an image store
	// blob shared with the cache) counts under the first in Kinds order.
	Kinds map[Kind]int64
}

type inode struct{ dev, ino uint64 }

// Measure walks root and counts what it holds. Mounts under root (an
// overlay a build has mounted) are not descended into: their bytes are
// already counted where they live.
//
// immutable, when not nil, says which directories' content never changes
// once they have their name, such as extracted layers: each is walked once and its size remembered in root/du-cache.json
// by name and inode, so measuring after every build costs a walk of what
// changed, not of every extracted file (60,000 files took 150 ms).
func Measure(ctx context.Context, root string, immutable func(path string) bool) (Usage, error) {
	u := Usage{Kinds: map[Kind]int64{}}
	var rootSt unix.Stat_t
	if err := unix.Lstat(root, &rootSt); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return u, nil
		}
		return u, fmt.Errorf("measure %s: %w", root, err)
	}
	seen := map[inode]bool{}
	sizes := loadSizes(root)
	w := &walker{dev: uint64(rootSt.Dev), seen: seen, immutable: immutable, old: sizes, now: map[string]dirSize{}}
	// Cache first, so a blob the image store shares is the cache's.
	for _, k := range Kinds {
		var tops []string
		if k == KindOther {
			des, err := os.ReadDir(root)
			if err != nil {
				return u, fmt.Errorf("measure %s: %w", root, err)
			}
			for _, de := range des {
				if kindOf(de.Name()) == KindOther {
					tops = append(tops, filepath.Join(root, de.Name()))
				}
			}
			u.Kinds[k] += allocated(&rootSt)
		} else {
			tops = []string{filepath.Join(root, string(k))}
		}
		for _, top := range tops {
			n, err := w.walk(ctx, top)
			if err != nil {
				return u, err
			}
			u.Kinds[k] += n
		}
	}
	for _, n := range u.Kinds {
		u.Total += n
	}
	if immutable != nil {
		saveSizes(root, w.now)
	}
	return u, nil
}

// dirSize is a remembered size of an immutable directory.
type dirSize struct {
	Ino   uint64 `json:"ino"`
	Bytes int64  `json:"bytes"`
}

const sizesFile = "du-cache.json"

func loadSizes(root string) map[string]dirSize {
	m := map[string]dirSize{}
	if b, err := os.ReadFile(filepath.Join(root, sizesFile)); err == nil {
		_ = json.Unmarshal(b, &m)
	}
	return m
}

// saveSizes writes the sizes seen by this walk (dropping removed
// directories), best effort: a lost write costs one more walk.
func saveSizes(root string, m map[string]dirSize) {
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	f, err := os.CreateTemp(root, ".du-cache-*")
	if err != nil {
		return
	}
	_, werr := f.Write(b)
	if cerr := f.Close(); werr != nil || cerr != nil {
		os.Remove(f.Name())
		return
	}
	if err := os.Rename(f.Name(), filepath.Join(root, sizesFile)); err != nil {
		os.Remove(f.Name())
	}
}

type walker struct {
	dev       uint64
	seen      map[inode]bool
	immutable func(string) bool
	old, now  map[string]dirSize
}

func (w *walker) isImmutable(p string) bool { return w.immutable != nil && w.immutable(p) }

// walk adds up the allocated bytes under p not yet seen, staying on
// device dev. Entries that vanish during the walk (a concurrent build
// renaming or removing) are skipped. It walks through descriptors
// (archive.Walk): an extracted layer nested thousands deep, past PATH_MAX,
// is measured in linear time instead of failing.
func (w *walker) walk(ctx context.Context, p string) (int64, error) {
	var rootSt unix.Stat_t
	if err := unix.Lstat(p, &rootSt); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, nil
		}
		return 0, fmt.Errorf("measure %s: %w", p, err)
	}
	if uint64(rootSt.Dev) != w.dev {
		return 0, nil
	}
	var total int64
	add := func(st *unix.Stat_t) {
		id := inode{uint64(st.Dev), st.Ino}
		if !w.seen[id] {
			w.seen[id] = true
			total += allocated(st)
		}
	}
	add(&rootSt)
	if rootSt.Mode&unix.S_IFMT != unix.S_IFDIR {
		return total, nil
	}
	err := archive.Walk(ctx, p, func(e *archive.Entry) error {
		st := &e.Stat
		if uint64(st.Dev) != w.dev {
			return archive.ErrSkipDir
		}
		if e.IsDir() {
			if path := filepath.Join(p, filepath.FromSlash(e.Rel)); w.isImmutable(path) {
				if c, ok := w.old[path]; ok && c.Ino == st.Ino {
					w.now[path] = c
					total += c.Bytes
					return archive.ErrSkipDir
				}
				n, err := w.walk(ctx, path)
				if err != nil {
					return err
				}
				w.now[path] = dirSize{Ino: st.Ino, Bytes: n}
				total += n
				return archive.ErrSkipDir
			}
		}
		add(st)
		return nil
	})
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return total, fmt.Errorf("measure %s: %w", p, err)
	}
	return total, nil
}

func allocated(st *unix.Stat_t) int64 { return st.Blocks * 512 }

// SoleLink reports whether p is a file whose removal frees its blocks (no
// other hard link names it), or missing.
func SoleLink(p string) bool {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return true
	}
	return st.Nlink <= 1
}

// Freer removes files and counts the bytes that removal gives back to the
// filesystem: a file's blocks are freed only with its last hard link, so
// removing an image store blob still linked from the cache frees nothing.
type Freer struct {
	freed int64
}

// Freed is the bytes freed so far.
func (f *Freer) Freed() int64 { return f.freed }

// RemoveAll removes p and everything under it, counting what is freed. A
// missing p is not an error. Mounts under p are never descended into: a
// directory that is a mount point fails the removal instead.
func (f *Freer) RemoveAll(p string) error {
	var rootSt unix.Stat_t
	if err := unix.Lstat(p, &rootSt); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", p, err)
	}
	var freed int64
	isDir := rootSt.Mode&unix.S_IFMT == unix.S_IFDIR
	if rootSt.Nlink <= 1 || isDir {
		freed = allocated(&rootSt)
	}
	var err error
	if isDir {
		// Through descriptors, like walker.walk: any depth, linear time.
		err = archive.Walk(context.Background(), p, func(e *archive.Entry) error {
			st := &e.Stat
			if st.Dev != rootSt.Dev {
				return fmt.Errorf("%s is a mount point", filepath.Join(p, filepath.FromSlash(e.Rel)))
			}
			if st.Nlink <= 1 || e.IsDir() {
				freed += allocated(st)
			}
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	if err := os.RemoveAll(p); err != nil {
		return fmt.Errorf("remove %s: %w", p, err)
	}
	f.freed += freed
	return nil
}
