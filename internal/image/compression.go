package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/ioctx"
)

// Compression names the algorithm a layer blob is compressed with.
type Compression string

// The compressions kiln writes; the names are those of buildx's
// --output compression=... option.
const (
	Gzip         Compression = "gzip"
	Zstd         Compression = "zstd"
	Uncompressed Compression = "uncompressed"
)

// ErrUnknownCompression is returned for a compression name kiln cannot write.
var ErrUnknownCompression = errors.New("unknown compression")

// ParseCompression parses a user-supplied compression name; "" means gzip,
// BuildKit's default.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(strings.ToLower(strings.TrimSpace(s))); c {
	case "":
		return Gzip, nil
	case Gzip, Zstd, Uncompressed:
		return c, nil
	default:
		return "", fmt.Errorf("%w %q (want gzip, zstd or uncompressed)", ErrUnknownCompression, s)
	}
}

// MaxLevel is the highest compression-level buildx accepts for c: gzip 9,
// zstd 22, uncompressed 0.
func (c Compression) MaxLevel() int {
	switch c {
	case Gzip, "":
		return 9
	case Zstd:
		return 22
	}
	return 0
}

// CompressionOf tells a layer's compression from its media type (OCI and
// Docker, distributable or not); ok is false for a type it does not know.
func CompressionOf(mt types.MediaType) (c Compression, ok bool) {
	s := string(mt)
	switch {
	case strings.HasSuffix(s, "+zstd") || strings.HasSuffix(s, ".zstd"):
		return Zstd, true
	case strings.HasSuffix(s, "+gzip") || strings.HasSuffix(s, ".gzip"):
		return Gzip, true
	case strings.HasSuffix(s, ".tar"):
		return Uncompressed, true
	}
	return "", false
}

// mediaType is the layer media type for c in the chosen family. zstd exists
// only as an OCI media type, so, like BuildKit, it is used in Docker
// manifests too.
func (c Compression) mediaType(oci bool) (types.MediaType, error) {
	switch c {
	case Gzip, "":
		if oci {
			return types.OCILayer, nil
		}
		return types.DockerLayer, nil
	case Zstd:
		return types.OCILayerZStd, nil
	case Uncompressed:
		if oci {
			return types.OCIUncompressedLayer, nil
		}
		return types.DockerUncompressedLayer, nil
	default:
		return "", fmt.Errorf("%w %q", ErrUnknownCompression, string(c))
	}
}

// Recompress writes l's uncompressed tar again with opts' compression and
// level (buildx's force-compression), into a blob file in opts.Dir. The
// tar's bytes, and so its diffID, are unchanged; that is checked.
func Recompress(ctx context.Context, l v1.Layer, opts LayerOptions) (*Layer, error) {
	want, err := l.DiffID()
	if err != nil {
		return nil, fmt.Errorf("recompress layer: %w", err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("recompress layer %s: %w", want, err)
	}
	defer rc.Close()
	out, err := writeBlob(opts, func(w io.Writer) error {
		_, err := io.Copy(w, ioctx.Reader(ctx, rc))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("recompress layer %s: %w", want, err)
	}
	if out.diffID != want {
		_ = os.Remove(out.path)
		return nil, fmt.Errorf("recompress layer %s: its content has diffID %s", want, out.diffID)
	}
	return out, nil
}
