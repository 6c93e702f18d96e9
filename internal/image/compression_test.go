package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestRecompressKeepsContent(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), []byte(strings.Repeat("abc", 100000)), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := WriteLayer(context.Background(), root, Changes{Paths: []string{"f"}}, LayerOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	zero := 0
	for _, opts := range []LayerOptions{
		{Compression: Zstd, OCI: true},
		{Compression: Gzip, Level: &zero},
		{Compression: Uncompressed, OCI: true},
	} {
		opts.Dir = t.TempDir()
		out, err := Recompress(context.Background(), src, opts)
		if err != nil {
			t.Fatalf("%s: %v", opts.Compression, err)
		}
		want, _ := src.DiffID()
		if got, _ := out.DiffID(); got != want {
			t.Errorf("%s: diffID %s, want %s", opts.Compression, got, want)
		}
		mt, _ := out.MediaType()
		if wantMT, _ := opts.Compression.mediaType(opts.OCI); mt != wantMT {
			t.Errorf("%s: media type %s, want %s", opts.Compression, mt, wantMT)
		}
		if n, _ := out.Size(); opts.Level != nil && n < 300000 {
			t.Errorf("gzip level 0: %d bytes, want the 300 kB stored", n)
		}
		if mt == types.OCILayerZStd {
			rc, err := out.Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			rc.Close()
		}
	}
}

// A layer written as zstd (a cache-only blob) and later re-encoded for an
// image is the very blob a build writing gzip makes: the image a reused
// cache-only layer ends up in has the digest a gzip build gives it.
func TestRecompressFromZstdMatchesDirectGzip(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), []byte(strings.Repeat("kiln ", 700000)), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func(c Compression) *Layer {
		l, err := WriteLayer(context.Background(), root, Changes{Paths: []string{"f"}}, LayerOptions{Compression: c, Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	direct, cached := write(Gzip), write(Zstd)
	again, err := Recompress(context.Background(), cached, LayerOptions{Compression: Gzip, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dd, _ := direct.Digest()
	ad, _ := again.Digest()
	if dd != ad {
		t.Errorf("zstd re-encoded to gzip is %s, a gzip write is %s", ad, dd)
	}
}

func TestCompressionOf(t *testing.T) {
	for mt, want := range map[types.MediaType]Compression{
		types.OCILayer:                     Gzip,
		types.DockerLayer:                  Gzip,
		types.DockerForeignLayer:           Gzip,
		types.OCIRestrictedLayer:           Gzip,
		types.OCILayerZStd:                 Zstd,
		types.OCIUncompressedLayer:         Uncompressed,
		types.DockerUncompressedLayer:      Uncompressed,
		"application/vnd.in-toto+json":     "",
		"application/vnd.oci.image.config": "",
	} {
		got, ok := CompressionOf(mt)
		if got != want || ok != (want != "") {
			t.Errorf("CompressionOf(%s) = %q, %v; want %q", mt, got, ok, want)
		}
	}
}
