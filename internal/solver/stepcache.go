package solver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/cachekey"
)

// usedRecord is a cache record this build produced or hit, with its layer,
// for --cache-to.
type usedRecord struct {
	rec   cache.Record
	layer v1.Layer
}

// stepCache is one build's step cache: the stores it reads and writes,
// what it used (for --cache-to) and the build summary. The solver holds one; it knows stores and records, not stages.
type stepCache struct {
	local *cache.Local // kiln's own, always written
	// sources are the stores read, in the user's order: local first, then
	// each --cache-from, possibly still opening. A lookup asks them all
	// at once and takes the first in this order that has the record.
	sources []*source
	// asking bounds the store reads in flight across the build.
	asking chan struct{}
	// from is sources once every one has opened, without those that
	// failed to; set by ready, and read only after it returned (by this
	// goroutine or one it started).
	from      []cache.Store
	readyOnce sync.Once

	mu    sync.Mutex
	used  map[digest.Digest]usedRecord
	steps []*stepStat
	// mounts are the cache mounts (id -> directory) steps that ran used.
	mounts map[string]string
	// unstepped counts the layer bytes a cache export uploads that no
	// step made (cache-mount packs and manifests, zstd copies of base layers), so
	// the report's total is what went up.
	unstepped atomic.Int64

	// layerCtx is the whole build's context: lazy layers of hits fetch
	// with it when read, long after the step that found them returned.
	layerCtx context.Context
	// warn reports a store that cannot be read (a miss, never a failure).
	warn func(string)
}

// failed adds a step that failed to the build summary.
func (c *stepCache) failed(rep *stepStat, err error) {
	rep.Error = err.Error()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps = append(c.steps, rep)
}

func (c *stepCache) remember(r usedRecord, rep *stepStat) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.used == nil {
		c.used = map[digest.Digest]usedRecord{}
	}
	c.used[r.rec.Key] = r
	if rep != nil {
		c.steps = append(c.steps, rep)
	}
}

// source is one store a build reads, opened in the background: a
// registry cache reads its index when opened, and that read overlaps
// resolving base images and hashing the context.
type source struct {
	done  chan struct{} // closed once the store is open, or failed to
	store cache.Store   // nil if it failed to open (warned about then)
}

// opened is a source whose store is open already.
func opened(st cache.Store) *source {
	s := &source{done: make(chan struct{}), store: st}
	close(s.done)
	return s
}

func (s *source) wait(ctx context.Context) (cache.Store, error) {
	select {
	case <-s.done:
		return s.store, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// maxAsking bounds the store reads in flight at once: a lookup asks every
// store, and as many stages as run at once may look up.
const maxAsking = 8

// ready waits until every store has opened (or failed to) and sets from.
func (c *stepCache) ready(ctx context.Context) error {
	for _, src := range c.sources {
		if _, err := src.wait(ctx); err != nil {
			return err
		}
	}
	c.readyOnce.Do(func() {
		for _, src := range c.sources {
			if src.store != nil {
				c.from = append(c.from, src.store)
			}
		}
	})
	return nil
}

// answer is what one store said to one question.
type answer[T any] struct {
	v   T
	ok  bool
	err error
}

// firstAnswer asks every store at once and returns the answer of the
// first one, in the user's order, that has one: what asking them one after
// another would return, without waiting for each in turn. A store that
// fails is warned about (with what) only if a sequential walk would have
// asked it, and counts as having no answer; the stores after the one that
// answers are cancelled.
func firstAnswer[T any](ctx context.Context, c *stepCache, what string, ask func(context.Context, cache.Store) (T, bool, error)) (T, bool) {
	answers := make([]chan answer[T], len(c.sources))
	var wg sync.WaitGroup
	defer wg.Wait()
	actx, cancel := context.WithCancel(ctx)
	defer cancel() // before the wait: the stores not needed stop
	for i, src := range c.sources {
		ch := make(chan answer[T], 1)
		answers[i] = ch
		wg.Go(func() {
			st, err := src.wait(actx)
			if err != nil || st == nil {
				ch <- answer[T]{err: err}
				return
			}
			select {
			case c.asking <- struct{}{}:
			case <-actx.Done():
				ch <- answer[T]{err: actx.Err()}
				return
			}
			defer func() { <-c.asking }()
			v, ok, err := ask(actx, st)
			ch <- answer[T]{v: v, ok: ok, err: err}
		})
	}
	for i, ch := range answers {
		a := <-ch
		if a.ok {
			return a.v, true
		}
		if a.err != nil && ctx.Err() == nil && what != "" {
			c.warn(fmt.Sprintf("cache %s: %v (%s)", c.sources[i].store, a.err, what))
		}
	}
	var zero T
	return zero, false
}

// found is a record a lookup found, with its lazy layer and its store.
type found struct {
	rec   cache.Record
	layer v1.Layer
	from  string
}

// lookup finds key in the caches and returns the record with a lazy layer
// from the first store, in order, that has it: nothing is downloaded. A
// cache that cannot be read is a miss with a warning, never a failed
// build.
func (c *stepCache) lookup(ctx context.Context, key digest.Digest) (cache.Record, v1.Layer, string, bool) {
	f, ok := firstAnswer(ctx, c, "treated as a miss", func(ctx context.Context, st cache.Store) (found, bool, error) {
		rec, err := st.Get(ctx, key)
		if errors.Is(err, cache.ErrNotFound) {
			return found{}, false, nil
		}
		if err != nil {
			return found{}, false, err
		}
		l, err := st.Layer(c.layerCtx, rec)
		if err != nil {
			return found{}, false, err
		}
		return found{rec: rec, layer: l, from: st.String()}, true, nil
	})
	return f.rec, f.layer, f.from, ok
}

// explain says which input changed since an earlier build of the step
// named id (see builder.stepID), now keyed key with inputs in: the first
// store, in order, whose earlier record explains it.
func (c *stepCache) explain(ctx context.Context, id string, key digest.Digest, in cachekey.Inputs, files []cachekey.File) string {
	why, _ := firstAnswer(ctx, c, "", func(ctx context.Context, st cache.Store) (string, bool, error) {
		prev, err := st.Previous(ctx, id)
		if err != nil || prev.Key == key {
			return "", false, nil
		}
		why := cachekey.Explain(prev.Inputs, in, files)
		return why, why != "", nil
	})
	return why
}

// record describes a new layer for the cache.
func record(key digest.Digest, stepID string, in cachekey.Inputs, l v1.Layer, created time.Time) (cache.Record, error) {
	d, err := descriptor(l)
	if err != nil {
		return cache.Record{}, err
	}
	return cache.Record{Key: key, Layer: d, Created: created, LastUsed: time.Now().UTC(), StepID: stepID, Inputs: map[string]string(in)}, nil
}

func descriptor(l v1.Layer) (cache.Descriptor, error) {
	var d cache.Descriptor
	var err error
	if d.MediaType, err = l.MediaType(); err != nil {
		return d, err
	}
	if d.Digest, err = l.Digest(); err != nil {
		return d, err
	}
	if d.DiffID, err = l.DiffID(); err != nil {
		return d, err
	}
	d.Size, err = l.Size()
	return d, err
}
