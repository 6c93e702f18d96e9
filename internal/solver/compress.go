package solver

import (
	"context"
	"fmt"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

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
	if cl, ok := l.(*countingLayer); ok {
		l = cl.Layer
	}
	il, ok := l.(*image.Layer)
	if !ok || il.Compression() != opts.Compression {
		return false
	}
	a, w := b.layer.Level, opts.Level
	return (a == nil && w == nil) || (a != nil && w != nil && *a == *w)
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
