package solver

import (
	"context"
	"os"
	"path"
	"path/filepath"
	"sync"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kiln-build/kiln/internal/snapshot"
)

// Prefetch: once a step is known to miss, what it will need — the stage's
// layers under it, the cache mounts a RUN mounts — starts downloading in
// the background, so the downloads overlap the work before the step's
// snapshot is prepared (its explanation, the mount restores, other layers)
// instead of following it. Only a miss triggers it: a hit never downloads.
// A failed prefetch is silent: the step's own Prepare or restore does the
// work again and reports its error.

// prefetches tracks the build's background fetches. wait must return
// before the build's directory is removed: extractions in flight write
// into it.
type prefetches struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	mounts map[string]*mountPrefetch // by cache mount id
}

// mountPrefetch is a cache mount's contents being restored into tmp (a
// build-owned name next to the mount's directory, so seeding renames it).
type mountPrefetch struct {
	done     chan struct{}
	tmp      string
	restored bool
	taken    bool // seedCache took tmp over
}

// wait blocks until every background fetch has returned, then removes the
// restored mounts no step took over.
func (p *prefetches) wait() {
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.mounts {
		if !m.taken {
			os.RemoveAll(m.tmp)
		}
	}
	p.mounts = nil
}

// prefetch starts fetching what the missed step st of s needs. It returns
// at once; ctx is the stage's, cancelled when the build fails.
func (b *builder) prefetch(ctx context.Context, s *stage, st step) {
	b.prefetchLayers(ctx, s)
	if st.run != nil {
		b.prefetchMounts(ctx, s, st.run)
	}
}

// prefetchLayers gets the stage's layers into the snapshotter's store,
// where the step's Prepare finds them (or waits for them).
func (b *builder) prefetchLayers(ctx context.Context, s *stage) {
	snap, err := b.snapshotter()
	if err != nil {
		return
	}
	p, ok := snap.(snapshot.Prefetcher)
	if !ok {
		return // the copy snapshotter: Prepare copies everything anyway
	}
	layers, _, err := b.snapshotLayers(ctx, s)
	if err != nil || len(layers) == 0 {
		return
	}
	b.prefetches.wg.Go(func() { _ = p.Prefetch(ctx, layers) })
}

// prefetchMounts restores, in the background, the cache mounts of c that
// the runner lacks and a --cache-from may hold: those cacheMount would
// seed by restoring.
func (b *builder) prefetchMounts(ctx context.Context, s *stage, c *instructions.RunCommand) {
	if len(b.caches.from) == 0 {
		return
	}
	wd := s.cfg.Config.WorkingDir
	if wd == "" {
		wd = "/"
	}
	for _, m := range instructions.GetMounts(c) {
		if m.Type != instructions.MountTypeCache || m.From != "" || m.CacheSharing == instructions.MountSharingPrivate {
			continue
		}
		target := m.Target
		if target != "" && !path.IsAbs(target) {
			target = path.Join(wd, target)
		}
		id, dir := b.cacheMountDir(m, target)
		if _, err := os.Stat(dir); err == nil {
			continue
		}
		b.prefetches.mu.Lock()
		if _, ok := b.prefetches.mounts[id]; ok {
			b.prefetches.mu.Unlock()
			continue
		}
		tmp, err := b.seedDir(dir)
		if err != nil {
			b.prefetches.mu.Unlock()
			continue
		}
		mp := &mountPrefetch{done: make(chan struct{}), tmp: tmp}
		if b.prefetches.mounts == nil {
			b.prefetches.mounts = map[string]*mountPrefetch{}
		}
		b.prefetches.mounts[id] = mp
		b.prefetches.mu.Unlock()
		b.prefetches.wg.Go(func() {
			defer close(mp.done)
			restored, err := b.restoreMount(ctx, id, tmp, mountStatePath(dir))
			mp.restored = err == nil && restored
		})
	}
}

// prefetchedMount waits for the background restore of cache mount id, if
// one was started, and hands over its directory when it restored the
// contents; ok is false when there was none, or it failed (the caller
// restores as if there had been none).
func (b *builder) prefetchedMount(ctx context.Context, id string) (tmp string, ok bool, err error) {
	b.prefetches.mu.Lock()
	mp := b.prefetches.mounts[id]
	b.prefetches.mu.Unlock()
	if mp == nil {
		return "", false, nil
	}
	select {
	case <-mp.done:
	case <-ctx.Done():
		return "", false, ctx.Err()
	}
	b.prefetches.mu.Lock()
	defer b.prefetches.mu.Unlock()
	if !mp.restored || mp.taken {
		return "", false, nil
	}
	mp.taken = true
	return mp.tmp, true, nil
}

// prefetchTried reports whether a background restore of cache mount id
// ran: when it restored nothing (no store had the contents, or one failed
// and was warned about) a second try would do the same.
func (b *builder) prefetchTried(id string) bool {
	b.prefetches.mu.Lock()
	defer b.prefetches.mu.Unlock()
	_, ok := b.prefetches.mounts[id]
	return ok
}

// seedDir makes a build-owned temporary directory beside the cache mount
// directory dir, for seeding it by rename.
func (b *builder) seedDir(dir string) (string, error) {
	// Named after the build, so that a kill while seeding leaves nothing
	// the next kiln cannot find (see state.RecordOwned).
	prefix := ".new-" + b.state.ID() + "-"
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return "", err
	}
	if err := b.state.RecordOwned(filepath.Join(filepath.Dir(dir), prefix+"*")); err != nil {
		return "", err
	}
	return os.MkdirTemp(filepath.Dir(dir), prefix)
}
