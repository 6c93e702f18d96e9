package solver

import (
	"context"
	"fmt"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/output"
)

// specLevel is an output's compression-level as layer options take it (nil
// when not given).
func specLevel(spec output.Spec) *int {
	if spec.CompressionLevel < 0 {
		return nil
	}
	n := spec.CompressionLevel
	return &n
}

// recompressed memoizes force-compression per layer and encoding, so two
// outputs asking the same do the work once.
type recompressed struct {
	mu   sync.Mutex
	done map[string]v1.Layer
	// forImage counts the cached layers re-encoded for the image
	// (imageEncoding), for the build summary.
	forImage int
}

// forceCompression is buildx's force-compression=true: every layer of the
// image, the base image's and cached ones included, in the output's
// compression and level. Layers this build wrote with exactly that encoding
// are kept as they are. The base's layers become plain layers of the
// result, so the image is assembled from them alone (nil base).
func (b *builder) forceCompression(ctx context.Context, s *stage, spec output.Spec) (v1.Image, []v1.Layer, error) {
	c, err := image.ParseCompression(spec.Compression)
	if err != nil {
		return nil, nil, err
	}
	opts := image.LayerOptions{Compression: c, Level: specLevel(spec), OCI: spec.OCIMediaTypes, Dir: b.layer.Dir}
	var all []v1.Layer
	if s.base != nil {
		ls, err := s.base.Layers()
		if err != nil {
			return nil, nil, fmt.Errorf("base layers: %w", err)
		}
		all = append(all, ls...)
	}
	all = append(all, s.added...)
	out := make([]v1.Layer, len(all))
	for i, l := range all {
		if b.wroteAs(l, opts) {
			out[i] = l
			continue
		}
		if out[i], err = b.recompress(ctx, l, opts); err != nil {
			return nil, nil, err
		}
	}
	return nil, out, nil
}

// wroteAs reports whether l is a layer this build wrote with opts'
// compression and level.
func (b *builder) wroteAs(l v1.Layer, opts image.LayerOptions) bool {
	il, ok := builtLayer(l)
	if !ok || il.Compression() != opts.Compression {
		return false
	}
	a, w := il.Level(), opts.Level
	return (a == nil && w == nil) || (a != nil && w != nil && *a == *w)
}

// builtLayer is the layer blob this build wrote (or re-encoded) behind l,
// if l is one.
func builtLayer(l v1.Layer) (*image.Layer, bool) {
	if cl, ok := l.(*countingLayer); ok {
		l = cl.Layer
	}
	il, ok := l.(*image.Layer)
	return il, ok
}

func (b *builder) recompress(ctx context.Context, l v1.Layer, opts image.LayerOptions) (v1.Layer, error) {
	d, err := l.DiffID()
	if err != nil {
		return nil, err
	}
	level := "default"
	if opts.Level != nil {
		level = fmt.Sprint(*opts.Level)
	}
	key := fmt.Sprintf("%s %s %s %v", d, opts.Compression, level, opts.OCI)
	b.recompressed.mu.Lock()
	defer b.recompressed.mu.Unlock()
	if got, ok := b.recompressed.done[key]; ok {
		return got, nil
	}
	out, err := image.Recompress(ctx, l, opts)
	if err != nil {
		return nil, err
	}
	if b.recompressed.done == nil {
		b.recompressed.done = map[string]v1.Layer{}
	}
	b.recompressed.done[key] = out
	return out, nil
}

// Blobs only the cache holds — layers of stages outside the image's FROM
// chain (a build stage whose files reach the image through COPY --from) —
// are encoded with b.cacheLayer (zstd unless a
// --cache-to says otherwise): only kiln reads them. Layers of the image's
// own FROM chain keep the output's encoding. Keys never name the layer's
// encoding, so a cache-only layer may later be wanted in an image (another
// --target, or a Dockerfile whose final stage is now built FROM it): the
// export re-encodes it then (imageEncoding).

// layerFor is how s's new layers are encoded: decided per stage, when a
// layer is made, from the target and the stages it is built FROM.
func (b *builder) layerFor(s *stage) image.LayerOptions {
	if b.inImage(s) {
		return b.layer
	}
	return b.cacheLayer
}

// inImage reports whether s is the target stage or one it is built FROM,
// however indirectly: whether s's layers are layers of the image.
func (b *builder) inImage(s *stage) bool {
	for i := b.target; ; {
		if i == s.index {
			return true
		}
		j, ok := b.parentStage(i, b.stages[i].def.BaseName)
		if !ok {
			return false
		}
		i = j
	}
}

// imageEncoding re-encodes the layers of the final stage that came out of
// the cache in another compression than the image's (a cache-only zstd
// layer recorded by an earlier build), so an image has the layers the
// output asks for. The re-encoded layer replaces the record in kiln's local
// cache and in what --cache-to exports, so the next build finds it as the
// image wants it and does not re-encode again. Base image layers are the
// base's, as in BuildKit, and are only touched by force-compression.
func (b *builder) imageEncoding(ctx context.Context, s *stage) error {
	want := b.layer.Compression
	if want == "" {
		want = image.Gzip
	}
	for i, l := range s.added {
		mt, err := l.MediaType()
		if err != nil {
			return fmt.Errorf("layer %d media type: %w", i, err)
		}
		if c, ok := image.CompressionOf(mt); !ok || c == want {
			continue
		}
		diffID, _ := l.DiffID()
		id, start := b.start(nil, fmt.Sprintf("recompressing cached layer %s for the image (%s to %s)", shortHash(diffID), mt, want))
		out, err := b.recompress(ctx, l, b.layer)
		if err != nil {
			b.fail(id, start, err)
			return fmt.Errorf("recompress cached layer %s for the image: %w", diffID, err)
		}
		b.done(id, start)
		b.recompressed.mu.Lock()
		b.recompressed.forImage++
		b.recompressed.mu.Unlock()
		s.added[i] = b.keepCounting(l, out)
		b.replaceRecord(ctx, s.keys[i], s.added[i])
	}
	return nil
}

// keepCounting wraps out as l was, so its upload is counted for the same step.
func (b *builder) keepCounting(l, out v1.Layer) v1.Layer {
	if ml, ok := l.(*remote.MountableLayer); ok {
		l = ml.Layer
	}
	if cl, ok := l.(*countingLayer); ok {
		return &countingLayer{Layer: out, n: cl.n, on: cl.on}
	}
	return out
}

// replaceRecord points key's record at l, in what --cache-to exports and in
// kiln's local cache. A local cache that cannot be written costs the next
// build a re-encoding, never this build.
func (b *builder) replaceRecord(ctx context.Context, key digest.Digest, l v1.Layer) {
	b.caches.mu.Lock()
	r, ok := b.caches.used[key]
	if ok {
		d, err := descriptor(l)
		if err != nil {
			ok = false
		} else {
			r.rec.Layer, r.layer = d, l
			b.caches.used[key] = r
		}
	}
	b.caches.mu.Unlock()
	if !ok {
		return
	}
	if err := b.caches.local.Put(ctx, r.rec, l); err != nil {
		b.warn(fmt.Sprintf("could not write kiln's local cache: %v", err))
	}
}

// cacheForced is what a --cache-to with force-compression=true exports for
// rec: its layer in the cache's compression and level, re-encoded when it
// is in another (BuildKit's "forcibly apply compression to all layers").
func (b *builder) cacheForced(ctx context.Context, spec CacheSpec, rec cache.Record, l v1.Layer) (cache.Record, v1.Layer, error) {
	if !spec.ForceCompression || l == nil || rec.Layer.IsZero() {
		return rec, l, nil
	}
	opts, err := cacheLayerOptions(Options{CacheTo: []CacheSpec{spec}, Epoch: b.opts.Epoch}, b.layer)
	if err != nil {
		return rec, l, err
	}
	opts.Dir = b.cacheLayer.Dir
	if c, ok := image.CompressionOf(rec.Layer.MediaType); ok && c == opts.Compression && b.sameLevel(l, opts) {
		return rec, l, nil
	}
	out, err := b.recompress(ctx, l, opts)
	if err != nil {
		return rec, l, fmt.Errorf("force-compression of %s: %w", rec.Layer.DiffID, err)
	}
	d, err := descriptor(out)
	if err != nil {
		return rec, l, err
	}
	rec.Layer = d
	return rec, b.keepCounting(l, out), nil
}

// sameLevel reports whether l, already in opts' compression, may stay as
// it is for opts' level: no level asked, or a blob from the cache (whose
// level no descriptor tells; re-encoding every hit on every build would
// cost a fully cached build what a cold one costs), or one this build
// wrote with that level.
func (b *builder) sameLevel(l v1.Layer, opts image.LayerOptions) bool {
	if _, built := builtLayer(l); opts.Level == nil || !built {
		return true
	}
	return b.wroteAs(l, opts)
}

func shortHash(h v1.Hash) string {
	if len(h.Hex) > 12 {
		return h.Algorithm + ":" + h.Hex[:12]
	}
	return h.String()
}
