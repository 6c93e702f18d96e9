package solver

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/snapshot"
)

// Alternate encodings: base image layers come from the base's registry in
// gzip, whose single-threaded inflate is most of what materializing a big
// base costs a fresh runner. kiln cannot change those blobs, but its cache
// is its own: a mode=max --cache-to also stores a zstd copy of each big
// base layer, as a record keyed by the layer's diffID (altKey). A later
// build hands the snapshotter that copy instead of the original: the same
// diffID, so the same extracted files, checked on the fly (a copy that
// decodes to anything else fails the extraction, which then falls back to
// the original). Only what the snapshotter extracts changes: the image is
// always assembled from the base's own layers.
//
// The copy is encoded from the original's tar as the build's own extraction
// inflates it (teeLayer: no second download, no second inflate), on a
// low-priority thread that follows a spool of the tar (altspool.go), and
// Put at cache export.

// altMinSize: smaller layers (a busybox-sized base) inflate in tens of
// milliseconds; a second blob is not worth its upload and index entry.
const altMinSize = 4 << 20

// altLevel is the zstd level of the copies: the fastest encoder, since a
// cold build pays for it and decoding speed hardly depends on the level.
var altLevel = 1

// altKey is the cache key of the zstd copy of the layer with diffID d. Its
// preimage shares no prefix with a step key's (internal/cachekey) or a
// cache mount's (mountstore.Key).
func altKey(d v1.Hash) digest.Digest {
	return digest.FromString("kiln alt-encoding v1 zstd " + d.String())
}

// alternates is the build's state of alternate encodings.
type alternates struct {
	mu sync.Mutex
	// found are the copies a --cache-from holds, by diffID (nil: none);
	// looked up once per build.
	found map[v1.Hash]*foundAlt
	// made are the copies this build is making, by diffID.
	made map[v1.Hash]*madeAlt
	// off: a copy failed; the build extracts originals only from then on.
	off atomic.Bool

	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

type foundAlt struct {
	rec   cache.Record
	layer v1.Layer
	used  bool
}

// madeAlt is one attempt at a copy; layer and err are set when done is
// closed.
type madeAlt struct {
	done  chan struct{}
	layer *image.Layer
	err   error
	// tid is the encoder's thread while it runs at low priority (see
	// altspool.go), 0 once it is not.
	tid atomic.Int32
}

// stop cancels the transcodes still running and waits for them: nothing
// may write into the build's directory once it is removed.
func (a *alternates) stop() {
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
}

// wantAlternates reports whether this build makes copies of the base
// layers it extracts: when some --cache-to is mode=max.
func (b *builder) wantAlternates() bool {
	if b.opts.DryRun {
		return false
	}
	for _, spec := range b.opts.CacheTo {
		if spec.Mode != "min" {
			return true
		}
	}
	return false
}

// altWorthy reports whether base layer l deserves a zstd copy: big enough,
// and gzip (not zstd already, nor uncompressed or foreign).
func altWorthy(l v1.Layer) (v1.Hash, bool) {
	mt, err := l.MediaType()
	if err != nil {
		return v1.Hash{}, false
	}
	if c, ok := image.CompressionOf(mt); !ok || c != image.Gzip {
		return v1.Hash{}, false
	}
	if n, err := l.Size(); err != nil || n < altMinSize {
		return v1.Hash{}, false
	}
	d, err := l.DiffID()
	if err != nil {
		return v1.Hash{}, false
	}
	return d, true
}

// snapshotLayers is s.layers() as handed to the snapshotter: each big base
// layer replaced by its zstd copy from a --cache-from when one exists, or
// else wrapped so that extracting it makes the copy, when a --cache-to
// wants one. alt reports whether any copy was substituted.
func (b *builder) snapshotLayers(ctx context.Context, s *stage) (layers []v1.Layer, alt bool, err error) {
	layers, err = s.layers()
	if err != nil || s.base == nil || b.alts.off.Load() {
		return layers, false, err
	}
	base, err := s.base.Layers()
	if err != nil {
		return nil, false, fmt.Errorf("read base image layers: %w", err)
	}
	for i := range base {
		d, ok := altWorthy(layers[i])
		if !ok {
			continue
		}
		if l := b.foundAlternate(ctx, d); l != nil {
			layers[i], alt = l, true
			continue
		}
		if b.wantAlternates() {
			layers[i] = &teeLayer{Layer: layers[i], b: b, diffID: d}
		}
	}
	return layers, alt, nil
}

// foundAlternate returns the zstd copy of the layer with diffID d that the
// first --cache-from holding one has (a lookup: nothing is downloaded
// until the snapshotter reads it), or nil.
func (b *builder) foundAlternate(ctx context.Context, d v1.Hash) v1.Layer {
	b.alts.mu.Lock()
	defer b.alts.mu.Unlock()
	if f, ok := b.alts.found[d]; ok {
		if f == nil {
			return nil
		}
		f.used = true
		return f.layer
	}
	if b.alts.found == nil {
		b.alts.found = map[v1.Hash]*foundAlt{}
	}
	b.alts.found[d] = nil
	for _, st := range b.caches.from {
		rec, err := st.Get(ctx, altKey(d))
		if err != nil {
			continue // a miss, or a cache that fails: the original will do
		}
		if rec.Layer.DiffID != d {
			b.warn(fmt.Sprintf("%s: the zstd copy recorded for layer %s is of layer %s (ignored)", st, shortHash(d), shortHash(rec.Layer.DiffID)))
			continue
		}
		l, err := st.Layer(b.ctx, rec)
		if err != nil {
			continue
		}
		b.alts.found[d] = &foundAlt{rec: rec, layer: l, used: true}
		return l
	}
	return nil
}

// prepareSnapshot prepares a snapshot of s's layers, the big base layers
// through their zstd copies when the cache has them. A copy that fails (its
// bytes are not the layer it claims to be, or it cannot be read) costs a
// warning and the original's download, never the build or a wrong root
// filesystem.
func (b *builder) prepareSnapshot(ctx context.Context, snap snapshot.Snapshotter, s *stage) (snapshot.Active, error) {
	layers, alt, err := b.snapshotLayers(ctx, s)
	if err != nil {
		return nil, err
	}
	active, err := snap.Prepare(ctx, layers)
	if err == nil || !alt || ctx.Err() != nil {
		return active, err
	}
	if !b.alts.off.Swap(true) {
		b.warn(fmt.Sprintf("a zstd copy of a base layer from the cache failed: %v (extracting the original layers instead)", err))
	}
	if layers, err = s.layers(); err != nil {
		return nil, err
	}
	return snap.Prepare(ctx, layers)
}

// teeLayer is a base layer whose uncompressed tar, as the snapshotter's
// extraction inflates and verifies it, is also encoded as the zstd copy
// (snapshot.TarTee): each base layer is inflated once, and a hit, which
// extracts nothing, makes no copy.
type teeLayer struct {
	v1.Layer
	b      *builder
	diffID v1.Hash
}

var _ snapshot.TarTee = (*teeLayer)(nil)

// TeeTar starts the transcode of the tar the extraction is about to read,
// fed through a spool; none when the copy is made or being made already.
// The spool is the snapshotter's to close: with an error when the tar was
// not whole or not the layer's, which fails Recompress, as does a tar
// whose diffID Recompress finds is not the layer's.
func (t *teeLayer) TeeTar() snapshot.TarWriter {
	b := t.b
	m := b.claimAlternate(t.diffID)
	if m == nil {
		return nil
	}
	sp, err := newSpool(b.cacheLayer.Dir)
	if err != nil {
		m.err = err
		close(m.done)
		return nil
	}
	ctx := b.alts.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	b.alts.wg.Go(func() {
		defer close(m.done)
		defer sp.release()
		m.tid.Store(lowThread())
		defer m.tid.Store(0)
		opts := b.cacheLayer
		opts.Compression, opts.Level, opts.OCI = image.Zstd, &altLevel, true
		m.layer, m.err = image.Recompress(ctx, &spoolLayer{Layer: t.Layer, r: sp.reader(ctx)}, opts)
	})
	return sp
}

// claimAlternate returns a new attempt at the copy of diffID d, or nil
// when the copy was made or is being made. A failed attempt (its
// extraction cancelled, say) leaves the next extraction free to try.
func (b *builder) claimAlternate(d v1.Hash) *madeAlt {
	b.alts.mu.Lock()
	defer b.alts.mu.Unlock()
	if b.alts.made == nil {
		b.alts.made = map[v1.Hash]*madeAlt{}
	}
	if m, ok := b.alts.made[d]; ok {
		select {
		case <-m.done:
			if m.err == nil {
				return nil
			}
		default:
			return nil
		}
	}
	m := &madeAlt{done: make(chan struct{})}
	b.alts.made[d] = m
	return m
}

// spoolLayer is a layer whose uncompressed tar is read from r, once.
type spoolLayer struct {
	v1.Layer
	r io.Reader
}

func (l *spoolLayer) Uncompressed() (io.ReadCloser, error) { return io.NopCloser(l.r), nil }

// exportAlternates puts into w the zstd copies this build made that w
// lacks, and again the copies it used (which keeps them from ageing out
// while builds use them, as a step's record is). A copy that failed is a
// warning: the cache works without it.
func (b *builder) exportAlternates(ctx context.Context, w cache.Writer) error {
	b.alts.mu.Lock()
	var made []v1.Hash
	for d := range b.alts.made {
		made = append(made, d)
	}
	var used []*foundAlt
	for _, f := range b.alts.found {
		if f != nil && f.used {
			used = append(used, f)
		}
	}
	b.alts.mu.Unlock()
	sort.Slice(made, func(i, j int) bool { return made[i].String() < made[j].String() })
	now := time.Now().UTC()
	for _, d := range made {
		b.alts.mu.Lock()
		m := b.alts.made[d]
		b.alts.mu.Unlock()
		// Now the build waits for it: normal priority.
		raise(&m.tid)
		select {
		case <-m.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if m.err != nil {
			b.warn(fmt.Sprintf("zstd copy of base layer %s not exported: %v", shortHash(d), m.err))
			continue
		}
		if old, err := w.Get(ctx, altKey(d)); err == nil && old.Layer.DiffID == d {
			continue
		}
		if err := w.Put(ctx, b.altRecord(d, m.layer, now), b.counting(m.layer, &b.caches.unstepped)); err != nil {
			return fmt.Errorf("zstd copy of base layer %s: %w", d, err)
		}
	}
	for _, f := range used {
		rec := f.rec
		rec.LastUsed = now
		if err := w.Put(ctx, rec, b.counting(f.layer, &b.caches.unstepped)); err != nil {
			return fmt.Errorf("zstd copy of base layer %s: %w", rec.Layer.DiffID, err)
		}
	}
	return nil
}

func (b *builder) altRecord(d v1.Hash, l *image.Layer, now time.Time) cache.Record {
	desc, _ := descriptor(l)
	return cache.Record{
		Key:      altKey(d),
		Layer:    desc,
		Created:  now,
		LastUsed: now,
		StepID:   "alt-encoding|zstd|" + d.String(),
		Inputs:   map[string]string{"diffID": d.String()},
	}
}
