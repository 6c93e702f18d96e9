package solver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/lock"
	"github.com/kiln-build/kiln/internal/progress"
	"github.com/kiln-build/kiln/internal/snapshot"
)

// RUN --mount=type=cache contents travel with the cache: BuildKit cannot
// export them (moby/buildkit#1474, #1512), so every fresh runner loses its
// module and compiler caches. kiln stores each cache mount's contents as
// one more record of the cache, under a key derived from the mount id
// alone, whose "layer" is an archive of the directory. They are exported
// with mode=max only when a step that used them ran, and restored only
// when a step that mounts them misses and the runner has no such
// directory yet.

// mountKey is the cache key a cache mount's contents are stored under.
func mountKey(id string) digest.Digest {
	return digest.FromString("kiln.cachemount.v1\x00" + id)
}

// mountUsed notes that a running step used the cache mount id.
func (b *builder) mountUsed(id, dir string) {
	b.caches.mu.Lock()
	defer b.caches.mu.Unlock()
	if b.caches.mounts == nil {
		b.caches.mounts = map[string]string{}
	}
	b.caches.mounts[id] = dir
}

// restoreMount fills dir with the contents of cache mount id from the first
// --cache-from that has them. It reports whether it did. A cache that
// fails is a warning, never a failed build.
func (b *builder) restoreMount(ctx context.Context, id, dir string) (bool, error) {
	key := mountKey(id)
	for _, st := range b.caches.from {
		rec, err := st.Get(ctx, key)
		if errors.Is(err, cache.ErrNotFound) {
			continue
		}
		if err == nil {
			err = func() error {
				l, err := st.Layer(b.ctx, rec)
				if err != nil {
					return err
				}
				rc, err := l.Uncompressed()
				if err != nil {
					return err
				}
				defer rc.Close()
				return snapshot.Apply(ctx, dir, rc)
			}()
		}
		if err == nil {
			b.sink.Emit(progress.Event{Status: progress.Summary, Log: fmt.Sprintf("restored cache mount %s from %s (%s)", id, st, humanBytes(rec.Layer.Size))})
			return true, nil
		}
		b.warn(fmt.Sprintf("cache mount %s from %s: %v (starting empty)", id, st, err))
	}
	return false, nil
}

// exportMounts archives the cache mounts the build's running steps used
// and puts them into w, unless w already holds exactly these contents.
func (b *builder) exportMounts(ctx context.Context, w cache.Writer, spec CacheSpec) error {
	b.caches.mu.Lock()
	ids := make([]string, 0, len(b.caches.mounts))
	for id := range b.caches.mounts {
		ids = append(ids, id)
	}
	dirs := b.caches.mounts
	b.caches.mu.Unlock()
	sort.Strings(ids)
	for _, id := range ids {
		l, ok, err := b.archiveMount(ctx, id, dirs[id])
		if err != nil {
			return fmt.Errorf("archive cache mount %s: %w", id, err)
		}
		if !ok {
			continue
		}
		d, err := descriptor(l)
		if err != nil {
			return err
		}
		key := mountKey(id)
		if old, err := w.Get(ctx, key); err == nil && old.Layer.DiffID == d.DiffID {
			continue // unchanged: nothing to upload
		}
		rec := cache.Record{Key: key, Layer: d, Created: time.Now().UTC(), StepID: "cache-mount|" + id, Inputs: map[string]string{"mount": id}}
		rec, put, err := b.cacheForced(ctx, spec, rec, l)
		if err != nil {
			return fmt.Errorf("cache mount %s: %w", id, err)
		}
		if err := w.Put(ctx, rec, b.counting(put, &b.caches.unstepped)); err != nil {
			return fmt.Errorf("cache mount %s: %w", id, err)
		}
	}
	return nil
}

// mountArchiveWait bounds how long exporting a cache mount waits for
// other users of it (a RUN of a concurrent build) to finish.
var mountArchiveWait = 30 * time.Second

// archiveMount archives cache mount id while holding its lock exclusively,
// so no step of this or another kiln writes it meanwhile (a torn archive
// would be restored on every fresh runner). When the lock is not free
// within mountArchiveWait, the mount is skipped with a warning: ok is false.
func (b *builder) archiveMount(ctx context.Context, id, dir string) (*image.Layer, bool, error) {
	wctx, cancel := context.WithTimeout(ctx, mountArchiveWait)
	defer cancel()
	held, err := lock.Acquire(wctx, dir+".lock", lock.Exclusive)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		b.warn(fmt.Sprintf("cache mount %s not exported: still in use by another build after %s (%v)", id, mountArchiveWait, err))
		return nil, false, nil
	}
	defer held.Unlock()
	// Cache-only: encoded as the cache's blobs are (compress.go).
	l, err := archiveDir(ctx, dir, b.cacheLayer)
	return l, err == nil, err
}

// archiveDir writes a directory's whole tree as a deterministic layer. It
// walks through descriptors (archive.Walk): a tree of any depth in linear
// time.
func archiveDir(ctx context.Context, dir string, opts image.LayerOptions) (*image.Layer, error) {
	var paths []string
	err := archive.Walk(ctx, dir, func(e *archive.Entry) error {
		if e.Stat.Mode&unix.S_IFMT != unix.S_IFSOCK {
			paths = append(paths, e.Rel)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return image.WriteLayer(ctx, dir, image.Changes{Paths: paths}, opts)
}
