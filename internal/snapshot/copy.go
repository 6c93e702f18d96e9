package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/mount"
)

// copySnapshotter is the fallback where overlayfs is missing: every
// snapshot is a full merged tree, and Diff compares two walks of it. A
// committed tree is kept under its layer chain so the next step of the
// same stage takes it over by a rename instead of copying again.
type copySnapshotter struct {
	root   string
	active string // parent of active snapshots
}

// keepCommitted bounds the committed trees kept for reuse: each is a whole
// root filesystem, and only the newest of a stage is normally reused.
const keepCommitted = 4

// materialize is Materialize, replaceable by tests that count full copies.
var materialize = Materialize

func newCopy(root, active string) (*copySnapshotter, error) {
	return &copySnapshotter{root: root, active: active}, nil
}

func (c *copySnapshotter) Name() string { return NameCopy }

func (c *copySnapshotter) committedDir() string { return filepath.Join(c.root, "c") }

func (c *copySnapshotter) Prepare(ctx context.Context, layers []v1.Layer) (Active, error) {
	ids, err := diffIDs(layers)
	if err != nil {
		return nil, fmt.Errorf("prepare copy snapshot: %w", err)
	}
	dir, err := activeDir(c.active)
	if err != nil {
		return nil, err
	}
	a := &copyActive{c: c, dir: dir, ids: ids}
	if err := a.fill(ctx, layers); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("prepare copy snapshot: %w", err)
	}
	return a, nil
}

type copyActive struct {
	releaser
	c      *copySnapshotter
	dir    string
	ids    []v1.Hash
	before map[string]fileState
}

// fill takes over a committed tree of the same chain, or materializes the
// layers, then records the before-index Diff compares against.
func (a *copyActive) fill(ctx context.Context, layers []v1.Layer) error {
	committed := filepath.Join(a.c.committedDir(), chainKey(a.ids))
	// The tree takes the active dir's name; losing a race for the same
	// committed tree, or to eviction, just means copying.
	if err := os.Remove(a.dir); err != nil {
		return err
	}
	if err := os.Rename(committed, a.dir); err != nil {
		if err := os.Mkdir(a.dir, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(a.dir, 0o755); err != nil {
			return err
		}
		if err := materialize(ctx, a.dir, layers); err != nil {
			return err
		}
	}
	before, newest, err := index(ctx, a.dir)
	if err != nil {
		return err
	}
	a.before = before
	settle(newest)
	return nil
}

// settle waits until the coarse clock the kernel stamps ctimes with has
// moved past the newest recorded ctime, so a change made right after
// Prepare always shows as a different ctime.
func settle(newest int64) {
	const tick = 20 * time.Millisecond // a jiffy is at most 10ms
	if d := time.Until(time.Unix(0, newest).Add(tick)); d > 0 && d <= tick {
		time.Sleep(d)
	}
}

func (a *copyActive) Mounts() []mount.Mount {
	return []mount.Mount{{Type: "bind", Source: a.dir, Options: []string{"rbind", "rw"}}}
}

// Diff walks the tree again and compares it with the before-index.
func (a *copyActive) Diff(ctx context.Context) (Changes, string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return Changes{}, "", err
	}
	after, _, err := index(ctx, a.dir)
	if err != nil {
		return Changes{}, "", fmt.Errorf("diff copy snapshot: %w", err)
	}
	return compare(a.before, after), a.dir, nil
}

// compare lists new and changed paths of after, and paths of before that
// are gone, leaving out those under a directory that was itself deleted
// or replaced by a non-directory (writing the parent removes them).
func compare(before, after map[string]fileState) Changes {
	var ch Changes
	for p, s := range after {
		if b, ok := before[p]; !ok || b != s {
			ch.Paths = append(ch.Paths, p)
		}
	}
	for p := range before {
		if _, ok := after[p]; ok {
			continue
		}
		if parent := path.Dir(p); parent != "." {
			if ps, ok := after[parent]; !ok || !ps.isDir() {
				continue
			}
		}
		ch.Deleted = append(ch.Deleted, p)
	}
	sort.Strings(ch.Paths)
	sort.Strings(ch.Deleted)
	return ch
}

// Commit moves the tree to the committed store under the chain
// layers+[l]. The tree then differs from l extracted afresh only where the
// layer writer normalizes (sub-second times, SOURCE_DATE_EPOCH clamping,
// xattrs), as a warm BuildKit cache does too.
func (a *copyActive) Commit(_ context.Context, l v1.Layer) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return err
	}
	h, err := l.DiffID()
	if err != nil {
		return fmt.Errorf("commit copy snapshot: layer diffID: %w", err)
	}
	ids := append(append([]v1.Hash(nil), a.ids...), h)
	if err := os.MkdirAll(a.c.committedDir(), 0o700); err != nil {
		return fmt.Errorf("commit copy snapshot: %w", err)
	}
	dst := filepath.Join(a.c.committedDir(), chainKey(ids))
	if err := os.Rename(a.dir, dst); err != nil {
		if _, serr := os.Lstat(dst); serr != nil {
			return fmt.Errorf("commit copy snapshot: %w", err)
		}
		// The same chain was committed already; ours is redundant and
		// Release removes it.
		a.committed = true
		return nil
	}
	a.committed = true
	a.dir = ""
	a.c.evict(dst)
	return nil
}

// evict removes the oldest committed trees beyond keepCommitted, never
// keep (the one just committed). Failures only cost disk space.
func (c *copySnapshotter) evict(keep string) {
	entries, err := os.ReadDir(c.committedDir())
	if err != nil || len(entries) <= keepCommitted {
		return
	}
	type aged struct {
		path string
		mod  time.Time
	}
	var all []aged
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			all = append(all, aged{filepath.Join(c.committedDir(), e.Name()), info.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mod.After(all[j].mod) })
	for i, e := range all {
		if i >= keepCommitted && e.path != keep {
			_ = os.RemoveAll(e.path)
		}
	}
}

func (a *copyActive) Release() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.released {
		return nil
	}
	if a.dir != "" {
		if err := os.RemoveAll(a.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("release copy snapshot: %w", err)
		}
	}
	a.released = true
	return nil
}
