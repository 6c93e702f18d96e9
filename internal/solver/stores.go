package solver

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kiln-build/kiln/internal/cache"
)

// startStores starts opening every --cache-from at once, in the
// background, as the build begins: a registry cache reads its index when
// it opens, and those reads then overlap resolving the base images and
// hashing the context instead of preceding them; the first lookup waits
// for them. A --cache-from that cannot be read is skipped with a warning:
// a cache is an accelerator, never a reason to fail a build. stop cancels
// the opens still under way and waits for them.
func (b *builder) startStores(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Few: each is one or two small reads, and the user lists a handful.
	limit := make(chan struct{}, 4)
	b.caches.sources = make([]*source, len(b.opts.CacheFrom))
	for i, spec := range b.opts.CacheFrom {
		src := &source{done: make(chan struct{})}
		b.caches.sources[i] = src
		wg.Go(func() {
			defer close(src.done)
			select {
			case limit <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-limit }()
			st, err := b.openCache(ctx, spec, false)
			if err != nil {
				if ctx.Err() == nil {
					b.warn(fmt.Sprintf("--cache-from %s: %v (continuing without it)", spec, err))
				}
				return
			}
			if l, ok := st.(*cache.Local); ok && b.opts.DryRun {
				l.SetReadOnly()
			}
			src.store = st
		})
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// openCaches opens kiln's local cache (always) and puts it first, before
// the --cache-from stores startStores is opening.
func (b *builder) openCaches(ctx context.Context) (unlock func(), err error) {
	dir := filepath.Join(b.tmp, "cache")
	if b.opts.CacheDir != "" {
		dir = filepath.Join(b.opts.CacheDir, "cache")
	}
	b.caches.layerCtx, b.caches.warn = b.ctx, b.warn
	b.caches.asking = make(chan struct{}, maxAsking)
	unlock = func() {}
	if _, err := os.Stat(dir); b.opts.DryRun && err != nil {
		// A dry run creates nothing: no cache yet is a cache of nothing.
	} else {
		local, err := cache.OpenLocal(dir)
		if err != nil {
			return nil, fmt.Errorf("kiln's local cache: %w", err)
		}
		unlock, err = local.Lock(ctx)
		if err != nil {
			return nil, fmt.Errorf("kiln's local cache: %w", err)
		}
		local.SetLease(b.lease)
		if b.opts.DryRun {
			local.SetReadOnly()
		}
		b.caches.local = local
		b.caches.sources = append([]*source{opened(local)}, b.caches.sources...)
	}
	return unlock, nil
}

func (b *builder) openCache(ctx context.Context, spec CacheSpec, write bool) (cache.Writer, error) {
	switch spec.Type {
	case "registry":
		r, err := cache.OpenRegistry(ctx, spec.Ref, b.opts.Registry)
		if err != nil {
			return nil, err
		}
		if write {
			r.SetBounds(cache.Bounds{MaxAge: spec.MaxAge, MaxEntries: spec.MaxEntries})
		}
		return r, nil
	case "local":
		if !write {
			if _, err := os.Stat(spec.Dir); err != nil {
				return nil, err
			}
		}
		l, err := cache.OpenLocal(spec.Dir)
		if err != nil {
			return nil, err
		}
		if write && (spec.MaxAge > 0 || spec.MaxEntries > 0) {
			// Bounds wait for the directory's exclusive lock, which this
			// build holds shared on its own cache until it ends.
			if own := b.caches.local; own != nil && own.Dir() == l.Dir() {
				return nil, fmt.Errorf("%s is kiln's own cache, bounded by kiln cache prune and its size bound, not max-age/max-entries", l.Dir())
			}
			l.SetBounds(cache.Bounds{MaxAge: spec.MaxAge, MaxEntries: spec.MaxEntries})
		}
		return l, nil
	}
	return nil, fmt.Errorf("unknown cache type %q", spec.Type)
}

// exportCaches writes this build's steps to every --cache-to: with
// mode=max every step of every stage it ran, with mode=min the final
// image's. An export that fails fails the build unless ignore-error=true.
func (b *builder) exportCaches(ctx context.Context, final *stage) error {
	for _, spec := range b.opts.CacheTo {
		id, start := b.start(nil, "exporting cache to "+spec.String())
		err := b.exportCache(ctx, spec, final)
		if err != nil {
			if spec.IgnoreError {
				b.done(id, start)
				b.warn(fmt.Sprintf("--cache-to %s: %v (ignored: ignore-error=true)", spec, err))
				continue
			}
			b.fail(id, start, err)
			return fmt.Errorf("--cache-to %s: %w", spec, err)
		}
		b.done(id, start)
	}
	return nil
}

func (b *builder) exportCache(ctx context.Context, spec CacheSpec, final *stage) error {
	w, err := b.openCache(ctx, spec, true)
	if err != nil {
		return err
	}
	b.caches.mu.Lock()
	used := make([]usedRecord, 0, len(b.caches.used))
	if spec.Mode == "min" {
		for _, k := range final.keys {
			if r, ok := b.caches.used[k]; ok {
				used = append(used, r)
			}
		}
	} else {
		for _, r := range b.caches.used {
			used = append(used, r)
		}
	}
	b.caches.mu.Unlock()
	defer b.uploading.begin(spec.Type == "registry")()
	now := time.Now().UTC()
	for _, r := range used {
		rec := r.rec
		rec.LastUsed = now
		rec, l, err := b.cacheForced(ctx, spec, rec, r.layer)
		if err != nil {
			return err
		}
		if err := w.Put(ctx, rec, l); err != nil {
			return err
		}
	}
	if spec.Mode != "min" {
		if err := b.exportAlternates(ctx, w); err != nil {
			return err
		}
		// The step layers and base copies go up while the cache mounts
		// are packed: packing is CPU, uploading mostly waiting on the
		// registry, and in a cold build each takes about a second.
		sent := b.sendStaged(ctx, w)
		err := b.exportMounts(ctx, w, spec)
		sent()
		if err != nil {
			return err
		}
	}
	return w.Flush(ctx)
}

// sendStaged starts uploading what w has staged, when w can (a registry);
// the returned func waits for it. A failed upload is Flush's to retry and
// report.
func (b *builder) sendStaged(ctx context.Context, w cache.Writer) (wait func()) {
	s, ok := w.(cache.Sender)
	if !ok {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Send(ctx)
	}()
	return func() { <-done }
}

// countingTransport counts the blob bytes downloaded from registries, for
// the build summary (and so tests can hold kiln to "a hit downloads
// nothing").
type countingTransport struct {
	next http.RoundTripper
	down *atomic.Int64
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/blobs/") {
		return resp, err
	}
	resp.Body = &countingReader{ReadCloser: resp.Body, n: t.down}
	return resp, nil
}
