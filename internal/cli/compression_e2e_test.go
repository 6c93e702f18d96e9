package cli_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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
	build := func(name, attrs string, flags ...string) v1.Image {
		dest := filepath.Join(out, name)
		args := append([]string{"build", "--progress=plain", "-o", "type=oci,tar=false,dest=" + dest + "," + attrs}, flags...)
		kiln(t, dir, nil, append(args, ".")...)
		return layoutImage(t, dest)
	}
	layers := func(img v1.Image) []v1.Descriptor {
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		return m.Layers
	}

	// compression-level: 0 stores, 9 compresses hard. It applies to the
	// layers a build writes (a cached layer keeps its encoding unless
	// force-compression, as in BuildKit), so each of these writes its own.
	stored := layers(build("level0", "compression=gzip,compression-level=0", "--no-cache"))
	best := layers(build("level9", "compression=gzip,compression-level=9", "--no-cache"))
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

// A cache key names what a step makes, not how its blob is encoded: a
// fresh runner asking a zstd image hits every step a gzip build cached,
// and gets the cached layers re-encoded for its image, as BuildKit
// converts its cache's blobs. Keyed by the output's compression, it
// rebuilt everything.
func TestOutputCompressionSharesTheCache(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	src := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nCOPY a.txt /a.txt\nRUN echo built >/built.txt\n",
		"a.txt":      "a\n",
	})
	cacheRef := reg + "/cache/enc:c"
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/enc:gzip",
		"--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")

	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	report := filepath.Join(t.TempDir(), "report.json")
	dest := filepath.Join(t.TempDir(), "oci")
	kiln(t, dir, env, "build", "--progress=plain", "-o", "type=oci,tar=false,compression=zstd,dest="+dest,
		"--cache-from", "type=registry,ref="+cacheRef, "--report", report, ".")
	r := readReport(t, report)
	if r.Totals.Steps != 2 || r.Totals.Cached != 2 {
		t.Errorf("a zstd build after a gzip one: %d of %d steps cached, want 2 of 2: %+v", r.Totals.Cached, r.Totals.Steps, r.Steps)
	}
	img := layoutImage(t, dest)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range m.Layers[1:] {
		if l.MediaType != types.OCILayerZStd {
			t.Errorf("cached layer %d of the zstd image is %s", i+1, l.MediaType)
		}
	}
	// The same files as the gzip image, layer for layer.
	gz, err := testenv.Pull(t, reg+"/enc:gzip").ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	zs, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gz.RootFS.DiffIDs, zs.RootFS.DiffIDs) {
		t.Errorf("diffIDs of the zstd image %v, want the gzip image's %v", zs.RootFS.DiffIDs, gz.RootFS.DiffIDs)
	}
}
