package cli_test

import (
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/testenv"
)

// layoutImage opens the one image of an OCI layout directory and checks
// that every layer blob matches its digest and its content its diffID.
func layoutImage(t *testing.T, dir string) v1.Image {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("%s: %v, %d manifests", dir, err, len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	// validate.Image reads every layer as gzip; check zstd ones too.
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		d, _ := l.Digest()
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		got, _, err := v1.SHA256(rc)
		rc.Close()
		if err != nil || got != d {
			t.Fatalf("%s: layer %d: blob digest %s, want %s (%v)", dir, i, got, d, err)
		}
		rc, err = l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		got, _, err = v1.SHA256(rc)
		rc.Close()
		if err != nil || got != cf.RootFS.DiffIDs[i] {
			t.Fatalf("%s: layer %d: content %s, want diffID %s (%v)", dir, i, got, cf.RootFS.DiffIDs[i], err)
		}
	}
	return img
}

// The output options compression-level and force-compression do what
// buildx's do: the level sets how hard new layers are compressed, and
// force-compression re-encodes the base image's layers too. Before, both
// were parsed and ignored.
func TestOutputCompressionOptions(t *testing.T) {
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	baseImg := testenv.Pull(t, base)
	baseDiff, _ := baseImg.ConfigFile()
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nCOPY big.txt /big.txt\n",
		"big.txt":    strings.Repeat("kiln compresses this line very well\n", 1<<15), // 1.1 MiB
	})
	out := t.TempDir()
	build := func(name, attrs string) v1.Image {
		dest := filepath.Join(out, name)
		kiln(t, dir, nil, "build", "--progress=plain", "-o", "type=oci,tar=false,dest="+dest+","+attrs, ".")
		return layoutImage(t, dest)
	}
	layers := func(img v1.Image) []v1.Descriptor {
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		return m.Layers
	}

	// compression-level: 0 stores, 9 compresses hard.
	stored := layers(build("level0", "compression=gzip,compression-level=0"))
	best := layers(build("level9", "compression=gzip,compression-level=9"))
	if n := stored[len(stored)-1].Size; n < 1<<20 {
		t.Errorf("compression-level=0: new layer is %d bytes, want it stored (over 1 MiB)", n)
	}
	if n := best[len(best)-1].Size; n > 64<<10 {
		t.Errorf("compression-level=9: new layer is %d bytes, want well under 64 KiB", n)
	}

	// Without force-compression the base layer keeps its gzip encoding.
	plain := layers(build("zstd", "compression=zstd"))
	if plain[0].MediaType == types.OCILayerZStd || plain[len(plain)-1].MediaType != types.OCILayerZStd {
		t.Errorf("compression=zstd: layer types %s, %s; want the base's kept and the new one zstd", plain[0].MediaType, plain[len(plain)-1].MediaType)
	}
	// With it, every layer is zstd, and the base's content is unchanged.
	forced := build("forced", "compression=zstd,force-compression=true")
	for i, l := range layers(forced) {
		if l.MediaType != types.OCILayerZStd {
			t.Errorf("force-compression: layer %d is %s, want zstd", i, l.MediaType)
		}
	}
	cf, err := forced.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cf.RootFS.DiffIDs[0], baseDiff.RootFS.DiffIDs[0]; got != want {
		t.Errorf("force-compression changed the base layer's content: diffID %s, want %s", got, want)
	}
}
