package solver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/gc"
	"github.com/kiln-build/kiln/internal/lock"
	"github.com/kiln-build/kiln/internal/output"
	"github.com/kiln-build/kiln/internal/snapshot"
	"github.com/kiln-build/kiln/internal/state"
)

// Disk is kiln's directory (Options.CacheDir) as a whole: what it holds,
// per kind, and the collection that keeps it bounded. Its layout:
//
//	cache/      the local build cache: records and layer blobs (package cache)
//	images/     the local image store, an OCI layout whose layer blobs are
//	            hard links to cache blobs (package output)
//	snapshots/  extracted layers, committed trees, active snapshots (package snapshot)
//	mounts/     RUN --mount=type=cache directories, each with a lock file
//	run/        one directory per running build (package state); its pins
//	            file says what the build uses (package gc)
//	gc.lock     held exclusively by a collection, shared by pins
//	du-cache.json  sizes of extracted layers, so measuring walks only what changed
type Disk struct{ Root string }

// DefaultMaxSize is the automatic bound when neither --max-cache-size nor
// KILN_MAX_CACHE_SIZE is set: 10% of the filesystem holding root, as
// BuildKit's default GC keeps, capped at 20 GB so a big disk does not
// mean an unbounded cache (a CI runner's whole working set is usually a
// few GB), and at least 1 GB where the filesystem is tiny.
func DefaultMaxSize(root string) int64 {
	const capBytes, floor = 20e9, 1e9
	dir := root
	for {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil {
			return min(max(int64(st.Blocks)*st.Bsize/10, floor), capBytes)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return capBytes
		}
		dir = parent
	}
}

// Usage measures what kiln's directory holds.
func (d Disk) Usage(ctx context.Context) (gc.Usage, error) {
	return gc.Measure(ctx, d.Root, d.snapshots().Immutable)
}

func (d Disk) snapshots() snapshot.Store {
	return snapshot.Store{Root: filepath.Join(d.Root, "snapshots")}
}

// Collect removes what p says from every kind of stored thing, least
// recently used first, never what a running build has pinned or locked.
// Extracted layers whose step has a newer result go first (with
// p.Superseded): they are the bytes a rebuild would otherwise pile up.
func (d Disk) Collect(ctx context.Context, p gc.Policy) (gc.Result, error) {
	if _, err := os.Stat(d.Root); errors.Is(err, fs.ErrNotExist) {
		return gc.Result{}, nil
	}
	local, err := cache.OpenLocal(filepath.Join(d.Root, "cache"))
	if err != nil {
		return gc.Result{}, fmt.Errorf("kiln's local cache: %w", err)
	}
	snaps := d.snapshots()
	if p.Superseded {
		sup, err := local.Superseded(ctx)
		if err != nil {
			return gc.Result{}, err
		}
		snaps.Superseded = map[string]bool{}
		for h := range sup {
			snaps.Superseded[snapshot.LayerPin(h)] = true
		}
	}
	sources := []gc.Source{local.GC(), output.StoreGC{Dir: filepath.Join(d.Root, "images")}, snaps, mountsGC{dir: filepath.Join(d.Root, "mounts")}}
	live := func() ([]string, error) { return state.Live(d.Root) }
	res, err := gc.Collect(ctx, d.Root, sources, p, time.Now(), live)
	if err != nil || !p.All {
		return res, err
	}
	// With no build running (none holds the cache's lock), what is left
	// in the transient directories is debris of killed builds.
	held, idle, err := lock.TryAcquire(filepath.Join(d.Root, "cache", "lock"), lock.Exclusive)
	if err != nil || !idle {
		return res, err
	}
	defer held.Unlock()
	f := &gc.Freer{}
	err = snaps.SweepIdle(f)
	if err == nil {
		err = mountsGC{dir: filepath.Join(d.Root, "mounts")}.sweepIdle(f)
	}
	res.Freed += f.Freed()
	res.After -= f.Freed()
	return res, err
}

// openLease starts this build's lease in its own directory (package
// state), so collections run by other kiln processes keep what it uses
// while it runs. Without a kiln directory there is nothing to share and no
// lease.
func (b *builder) openLease() error {
	if b.opts.CacheDir == "" {
		return nil
	}
	l, err := gc.NewLease(b.opts.CacheDir, b.state.Dir())
	if err != nil {
		return fmt.Errorf("kiln's directory: %w", err)
	}
	b.lease = l
	return nil
}

// mountsGC is the cache mounts as a gc.Source: one item per mount
// directory, in use while a build holds its lock file (mounts.go).
type mountsGC struct{ dir string }

func (m mountsGC) Items(ctx context.Context) ([]gc.Item, error) {
	des, err := os.ReadDir(m.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache mounts: %w", err)
	}
	var items []gc.Item
	for _, de := range des {
		if !de.IsDir() || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		p := filepath.Join(m.dir, de.Name())
		items = append(items, gc.Item{Kind: gc.KindMounts, Name: de.Name(), LastUsed: fi.ModTime(), Lock: p + ".lock",
			Remove: func(f *gc.Freer) error {
				// Out of its name first: a half-removed cache mount is
				// never mounted by the next build.
				tmp, err := os.MkdirTemp(m.dir, ".gc-")
				if err != nil {
					return err
				}
				if err := os.Rename(p, filepath.Join(tmp, "x")); err != nil && !errors.Is(err, fs.ErrNotExist) {
					os.Remove(tmp)
					return err
				}
				return f.RemoveAll(tmp)
			}})
	}
	return items, nil
}

func (m mountsGC) Sweep(context.Context, *gc.Freer, map[string]bool) error { return nil }

// sweepIdle removes half-made and half-removed mount directories; only
// with no build running.
func (m mountsGC) sweepIdle(f *gc.Freer) error {
	des, _ := os.ReadDir(m.dir)
	for _, de := range des {
		if de.IsDir() && strings.HasPrefix(de.Name(), ".") {
			if err := f.RemoveAll(filepath.Join(m.dir, de.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
