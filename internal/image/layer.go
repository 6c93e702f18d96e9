package image

import (
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/archive"
)

// Layer is a compressed layer blob in a file, with its digest, diffID, size
// and media type already known, so asking for them costs nothing. It
// implements v1.Layer.
type Layer struct {
	path        string
	digest      v1.Hash
	diffID      v1.Hash
	size        int64
	mediaType   types.MediaType
	compression Compression
	level       *int // as written; nil: the library default
	empty       bool
}

var _ v1.Layer = (*Layer)(nil)

// Path is the blob file; the caller owns the directory it is in.
func (l *Layer) Path() string { return l.path }

// Empty reports whether the layer tar has no entries, i.e. the step changed
// nothing on the filesystem.
//
// The caller decides what to do with it. BuildKit keeps such layers for
// filesystem instructions: a WORKDIR of an existing directory or a COPY that
// changes nothing still adds a layer (an empty tar; with gzip the well-known
// sha256:4f4fb700... blob) and a history entry with empty_layer=false, since
// its exporter never drops a layer for having an empty diff. Only metadata
// instructions (ENV, CMD, LABEL, ...) and "WORKDIR /" (dockerfile2llb's
// dispatchWorkdir makes no mkdir there) get empty_layer=true and no layer.
// Dropping empty layers is therefore a deviation from BuildKit that changes
// the image digest.
func (l *Layer) Empty() bool { return l.empty }

// Compression is the algorithm the blob is compressed with.
func (l *Layer) Compression() Compression { return l.compression }

// Level is the compression-level the blob was written with; nil is the
// library default.
func (l *Layer) Level() *int { return l.level }

// Digest is the sha256 of the compressed blob.
func (l *Layer) Digest() (v1.Hash, error) { return l.digest, nil }

// DiffID is the sha256 of the uncompressed tar.
func (l *Layer) DiffID() (v1.Hash, error) { return l.diffID, nil }

// Size is the compressed blob size in bytes.
func (l *Layer) Size() (int64, error) { return l.size, nil }

// MediaType is the layer media type written into manifests.
func (l *Layer) MediaType() (types.MediaType, error) { return l.mediaType, nil }

// Compressed opens the blob file.
func (l *Layer) Compressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, fmt.Errorf("open layer blob: %w", err)
	}
	return f, nil
}

// Uncompressed opens the blob file and decompresses it.
func (l *Layer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, fmt.Errorf("open layer blob: %w", err)
	}
	if l.compression == Uncompressed {
		return f, nil
	}
	kind := archive.Gzip
	if l.compression == Zstd {
		kind = archive.Zstd
	}
	// One home for decompressing tars: internal/archive.
	d, err := archive.NewReader(f, kind)
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("open %s layer %s: %w", l.compression, l.digest, err)
	}
	return &readCloser{Reader: d, close: func() error {
		derr := d.Close()
		if err := f.Close(); err != nil {
			return err
		}
		return derr
	}}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r *readCloser) Close() error { return r.close() }

// newCompressor wraps w in the compressor for c. Both compressors are set up
// for reproducible output: the gzip header has no name and a zero mtime, and
// zstd encodes on one goroutine so block boundaries never depend on timing.
func newCompressor(w io.Writer, c Compression, level *int) (io.WriteCloser, error) {
	switch c {
	case Uncompressed:
		return nopWriteCloser{w}, nil
	case Zstd:
		opts := []zstd.EOption{zstd.WithEncoderConcurrency(1)}
		if level != nil {
			opts = append(opts, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(*level)))
		}
		z, err := zstd.NewWriter(w, opts...)
		if err != nil {
			return nil, fmt.Errorf("zstd writer: %w", err)
		}
		return z, nil
	case Gzip, "":
		lv := gzip.DefaultCompression
		if level != nil {
			lv = *level
		}
		// Parallel gzip: 1 MiB blocks compressed on every core. The bytes
		// depend only on the input and the block size, never on timing.
		z, err := pgzip.NewWriterLevel(w, lv)
		if err != nil {
			return nil, fmt.Errorf("gzip writer level %d: %w", lv, err)
		}
		if err := z.SetConcurrency(1<<20, 2*runtime.GOMAXPROCS(0)); err != nil {
			return nil, fmt.Errorf("gzip writer: %w", err)
		}
		return z, nil
	default:
		return nil, fmt.Errorf("%w %q", ErrUnknownCompression, string(c))
	}
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
