package image

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

func writeTestLayer(t *testing.T, c Compression, oci bool, content string) *Layer {
	t.Helper()
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := WriteLayer(context.Background(), root, Changes{Paths: []string{"f"}}, LayerOptions{Compression: c, OCI: oci, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestAssemble(t *testing.T) {
	dockerBase, err := random.Image(256, 2) // Docker schema2, gzip layers
	if err != nil {
		t.Fatal(err)
	}
	ociBase, err := Assemble(nil, &v1.ConfigFile{OS: "linux", Architecture: "amd64"},
		[]v1.Layer{writeTestLayer(t, Gzip, true, "oci base")}, true)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name           string
		base           v1.Image
		added          []v1.Layer
		oci            bool
		wantManifest   types.MediaType
		wantConfig     types.MediaType
		wantLayerTypes []types.MediaType
		gzipOnly       bool // validate.Image reads layers as gzip
	}{
		{
			name: "scratch docker", added: []v1.Layer{writeTestLayer(t, Gzip, false, "a")},
			wantManifest: types.DockerManifestSchema2, wantConfig: types.DockerConfigJSON,
			wantLayerTypes: []types.MediaType{types.DockerLayer}, gzipOnly: true,
		},
		{
			name: "scratch oci, docker-typed layer relabelled", added: []v1.Layer{writeTestLayer(t, Gzip, false, "a")}, oci: true,
			wantManifest: types.OCIManifestSchema1, wantConfig: types.OCIConfigJSON,
			wantLayerTypes: []types.MediaType{types.OCILayer}, gzipOnly: true,
		},
		{
			name: "docker base into oci", base: dockerBase, added: []v1.Layer{writeTestLayer(t, Gzip, true, "b")}, oci: true,
			wantManifest: types.OCIManifestSchema1, wantConfig: types.OCIConfigJSON,
			wantLayerTypes: []types.MediaType{types.OCILayer, types.OCILayer, types.OCILayer}, gzipOnly: true,
		},
		{
			name: "oci base into docker", base: ociBase, added: []v1.Layer{writeTestLayer(t, Gzip, false, "c")},
			wantManifest: types.DockerManifestSchema2, wantConfig: types.DockerConfigJSON,
			wantLayerTypes: []types.MediaType{types.DockerLayer, types.DockerLayer}, gzipOnly: true,
		},
		{
			name: "zstd in a docker manifest stays oci zstd", base: dockerBase, added: []v1.Layer{writeTestLayer(t, Zstd, false, "d")},
			wantManifest: types.DockerManifestSchema2, wantConfig: types.DockerConfigJSON,
			wantLayerTypes: []types.MediaType{types.DockerLayer, types.DockerLayer, types.OCILayerZStd},
		},
		{
			name: "zstd oci", added: []v1.Layer{writeTestLayer(t, Zstd, true, "e"), writeTestLayer(t, Uncompressed, true, "f")}, oci: true,
			wantManifest: types.OCIManifestSchema1, wantConfig: types.OCIConfigJSON,
			wantLayerTypes: []types.MediaType{types.OCILayerZStd, types.OCIUncompressedLayer},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			created := v1.Time{Time: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
			cfg := &v1.ConfigFile{
				OS: "linux", Architecture: "amd64", Created: created,
				Config:  v1.Config{Env: []string{"PATH=/bin"}, Cmd: []string{"sh"}},
				History: []v1.History{{Created: created, CreatedBy: "COPY f /f"}, {Created: created, CreatedBy: "CMD [\"sh\"]", EmptyLayer: true}},
				RootFS:  v1.RootFS{Type: "bogus", DiffIDs: []v1.Hash{{Algorithm: "sha256", Hex: "00"}}},
			}
			img, err := Assemble(tt.base, cfg, tt.added, tt.oci)
			if err != nil {
				t.Fatal(err)
			}
			if tt.gzipOnly {
				if err := validate.Image(img); err != nil {
					t.Fatalf("validate.Image: %v", err)
				}
			} else {
				if err := validate.Image(img, validate.Fast); err != nil {
					t.Fatalf("validate.Image(Fast): %v", err)
				}
			}
			m, err := img.Manifest()
			if err != nil {
				t.Fatal(err)
			}
			if m.MediaType != tt.wantManifest || m.Config.MediaType != tt.wantConfig {
				t.Errorf("manifest %s config %s, want %s %s", m.MediaType, m.Config.MediaType, tt.wantManifest, tt.wantConfig)
			}
			if len(m.Layers) != len(tt.wantLayerTypes) {
				t.Fatalf("%d layers, want %d", len(m.Layers), len(tt.wantLayerTypes))
			}
			var wantDiffIDs []v1.Hash
			if tt.base != nil {
				bcf, _ := tt.base.ConfigFile()
				wantDiffIDs = append(wantDiffIDs, bcf.RootFS.DiffIDs...)
				bm, _ := tt.base.Manifest()
				for i, d := range bm.Layers {
					if m.Layers[i].Digest != d.Digest || m.Layers[i].Size != d.Size {
						t.Errorf("base layer %d changed: %v, was %v", i, m.Layers[i], d)
					}
				}
			}
			for _, l := range tt.added {
				d, _ := l.DiffID()
				wantDiffIDs = append(wantDiffIDs, d)
			}
			for i, want := range tt.wantLayerTypes {
				if m.Layers[i].MediaType != want {
					t.Errorf("layer %d media type %s, want %s", i, m.Layers[i].MediaType, want)
				}
			}
			got, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if got.RootFS.Type != "layers" || len(got.RootFS.DiffIDs) != len(wantDiffIDs) {
				t.Fatalf("rootfs = %+v, want layers %v", got.RootFS, wantDiffIDs)
			}
			for i := range wantDiffIDs {
				if got.RootFS.DiffIDs[i] != wantDiffIDs[i] {
					t.Errorf("diff_ids[%d] = %s, want %s", i, got.RootFS.DiffIDs[i], wantDiffIDs[i])
				}
			}
			if len(got.History) != 2 || got.History[1].CreatedBy != "CMD [\"sh\"]" || !got.History[1].EmptyLayer {
				t.Errorf("history not kept as given: %+v", got.History)
			}
			if len(got.Config.Env) != 1 || got.Config.Cmd[0] != "sh" {
				t.Errorf("config not kept: %+v", got.Config)
			}
			if cfg.RootFS.Type != "bogus" {
				t.Error("Assemble modified the caller's config")
			}
			// Every layer must be readable through the image as pushing
			// would read it.
			for _, d := range m.Layers {
				l, err := img.LayerByDigest(d.Digest)
				if err != nil {
					t.Fatalf("LayerByDigest(%s): %v", d.Digest, err)
				}
				if mt, _ := l.MediaType(); mt != d.MediaType {
					t.Errorf("layer %s reports %s, manifest says %s", d.Digest, mt, d.MediaType)
				}
			}
		})
	}
}

func TestAssembleNilConfig(t *testing.T) {
	if _, err := Assemble(nil, nil, nil, true); err == nil {
		t.Fatal("Assemble with nil config succeeded")
	}
}
