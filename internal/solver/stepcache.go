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
	local *cache.Local  // kiln's own, always written
	from  []cache.Store // read in order: local first, then --cache-from
	mu    sync.Mutex
	used  map[digest.Digest]usedRecord
	steps []*stepStat
	// mounts are the cache mounts (id -> directory) steps that ran used.
	mounts map[string]string
	// unstepped counts the layer bytes a cache export uploads that no
	// step made (cache-mount archives, zstd copies of base layers), so
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

// lookup finds key in the caches, in order, and returns the record with a
// lazy layer: nothing is downloaded. A cache that cannot be read is a miss
// with a warning, never a failed build.
func (c *stepCache) lookup(ctx context.Context, key digest.Digest) (cache.Record, v1.Layer, string, bool) {
	for _, st := range c.from {
		rec, err := st.Get(ctx, key)
		if errors.Is(err, cache.ErrNotFound) {
			continue
		}
		if err == nil {
			var l v1.Layer
			if l, err = st.Layer(c.layerCtx, rec); err == nil {
				return rec, l, st.String(), true
			}
		}
		c.warn(fmt.Sprintf("cache %s: %v (treated as a miss)", st, err))
	}
	return cache.Record{}, nil, "", false
}

// explain says which input changed since an earlier build of the step
// named id (see builder.stepID), now keyed key with inputs in.
func (c *stepCache) explain(ctx context.Context, id string, key digest.Digest, in cachekey.Inputs, files []cachekey.File) string {
	for _, st := range c.from {
		prev, err := st.Previous(ctx, id)
		if err != nil || prev.Key == key {
			continue
		}
		if why := cachekey.Explain(prev.Inputs, in, files); why != "" {
			return why
		}
	}
	return ""
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
