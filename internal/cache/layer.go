package cache

import (
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// lazyLayer is the compressed core of a cached layer: its metadata comes
// from the record, its bytes from open, which is called only when the
// layer is read. This is what makes a cache hit cost no download.
type lazyLayer struct {
	desc Descriptor
	// open returns the compressed bytes; each store verifies them against
	// desc.Digest (local: verifyReader; registry: ggcr's fetcher).
	open func() (io.ReadCloser, error)
}

func (l *lazyLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *lazyLayer) DiffID() (v1.Hash, error)            { return l.desc.DiffID, nil }
func (l *lazyLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *lazyLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *lazyLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.open()
	if err != nil {
		return nil, fmt.Errorf("cached layer %s: %w", l.desc.Digest, err)
	}
	return rc, nil
}

// verifiedLayer checks the uncompressed stream against the DiffID too, so a
// blob that decompresses to something else than the record promised fails
// the read rather than producing a wrong root filesystem.
type verifiedLayer struct {
	v1.Layer
	diffID v1.Hash
}

func (l *verifiedLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("cached layer %s: %w", l.diffID, err)
	}
	return newVerifyReader(rc, l.diffID, -1)
}

// newLazyLayer builds the full v1.Layer for a record's descriptor.
func newLazyLayer(desc Descriptor, open func() (io.ReadCloser, error)) (v1.Layer, error) {
	core, err := partial.CompressedToLayer(&lazyLayer{desc: desc, open: open})
	if err != nil {
		return nil, fmt.Errorf("cached layer %s: %w", desc.Digest, err)
	}
	return &verifiedLayer{Layer: core, diffID: desc.DiffID}, nil
}
