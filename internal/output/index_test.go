package output

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	kilngc "github.com/kiln-build/kiln/internal/gc"
)

// twoPlatforms is an index of two random images, as a multi-platform
// build makes it.
func twoPlatforms(t *testing.T) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, arch := range []string{"amd64", "arm64"} {
		img := mustRandom(t)
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "linux", arch
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	return idx
}

// An index goes into an OCI layout whole: index.json names the index, and
// every child image reads back valid from the layout.
func TestExportIndexToLayouts(t *testing.T) {
	ctx := context.Background()
	idx := twoPlatforms(t)
	want, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	for _, spec := range []Spec{
		{Type: TypeOCI, Tar: true},
		{Type: TypeOCI, Tar: false},
		{Type: TypeStore},
	} {
		t.Run(spec.Type, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			spec.Dest = dir
			env := Env{}
			if spec.Type == TypeStore {
				spec.Dest, env.StoreDir = "", dir
			}
			res, err := Export(ctx, spec, Image{Index: idx, Tags: []string{"app:v1"}}, env)
			if err != nil {
				t.Fatal(err)
			}
			if res.Digest != want || res.ConfigDigest != (v1.Hash{}) {
				t.Errorf("Result = %s (config %s), want the index %s and no config", res.Digest, res.ConfigDigest, want)
			}
			if spec.Type == TypeOCI && spec.Tar {
				dir = untar(t, dir)
			}
			_, descs := layoutNames(t, dir)
			if len(descs) != 1 || descs[0].Digest != want || descs[0].MediaType != types.OCIImageIndex {
				t.Fatalf("index.json = %+v, want one entry naming the image index %s", descs, want)
			}
			root, err := layout.ImageIndexFromPath(dir)
			if err != nil {
				t.Fatal(err)
			}
			back, err := root.ImageIndex(want)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate.Index(back); err != nil {
				t.Errorf("the index read back is invalid: %v", err)
			}
		})
	}
}

// Collecting kiln's store keeps the blobs an index's children name, and
// frees them all once the index goes.
func TestStoreGCFollowsIndexes(t *testing.T) {
	ctx := context.Background()
	store := t.TempDir()
	if _, err := Export(ctx, Spec{Type: TypeStore}, Image{Index: twoPlatforms(t), Tags: []string{"app:v1"}}, Env{StoreDir: store}); err != nil {
		t.Fatal(err)
	}
	before := len(dirEntries(t, filepath.Join(store, "blobs", "sha256")))
	s := StoreGC{Dir: store}
	var f kilngc.Freer
	if err := s.Sweep(ctx, &f, nil); err != nil {
		t.Fatal(err)
	}
	if after := len(dirEntries(t, filepath.Join(store, "blobs", "sha256"))); after != before {
		t.Fatalf("a sweep with the index named removed %d of %d blobs", before-after, before)
	}
	items, err := s.Items(ctx)
	if err != nil || len(items) != 1 {
		t.Fatalf("Items = %d items, %v; want the one index", len(items), err)
	}
	if err := items[0].Remove(&f); err != nil {
		t.Fatal(err)
	}
	if left := dirEntries(t, filepath.Join(store, "blobs", "sha256")); len(left) != 0 {
		t.Errorf("after removing the index, %d blobs are left: %v", len(left), left)
	}
}

// type=docker loads one platform: an index with one image and an
// attestation loads the image; two platforms are refused with a clear error.
func TestExportDockerFromIndex(t *testing.T) {
	ctx := context.Background()
	img := mustRandom(t)
	one := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: mustRandom(t), Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"}}})
	dest := filepath.Join(t.TempDir(), "img.tar")
	res, err := Export(ctx, Spec{Type: TypeDocker, Dest: dest}, Image{Index: one, Tags: []string{"app:v1"}}, Env{})
	if err != nil {
		t.Fatal(err)
	}
	if want := digestOf(t, img); res.Digest != want {
		t.Errorf("docker export wrote %s, want the platform image %s", res.Digest, want)
	}
	_, err = Export(ctx, Spec{Type: TypeDocker, Dest: dest}, Image{Index: twoPlatforms(t), Tags: []string{"app:v1"}}, Env{})
	if !errors.Is(err, ErrMultiPlatform) {
		t.Errorf("two platforms to type=docker: err = %v, want ErrMultiPlatform", err)
	}
}
