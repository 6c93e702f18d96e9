package image

import (
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Assemble builds the final image from base (nil = scratch) plus the added
// layers, with cfg as its config file.
//
// Assemble sets cfg.RootFS itself (type "layers", the base's diffIDs then
// the added ones); cfg.History is used as given, so the caller writes one
// entry per instruction. The manifest and config use Docker schema2 media
// types unless oci is set. Base layers of the other family are re-labelled
// (Docker gzip <-> OCI gzip, same bytes, same digest), as BuildKit does when
// exporting with or without oci-mediatypes; zstd and foreign layers keep
// their type. No layer is read: only descriptors are used, so a base image
// from a registry is not downloaded.
func Assemble(base v1.Image, cfg *v1.ConfigFile, added []v1.Layer, oci bool) (v1.Image, error) {
	if cfg == nil {
		return nil, fmt.Errorf("assemble image: nil config")
	}
	manifestType, configType := types.DockerManifestSchema2, types.DockerConfigJSON
	if oci {
		manifestType, configType = types.OCIManifestSchema1, types.OCIConfigJSON
	}

	var adds []mutate.Addendum
	if base != nil {
		m, err := base.Manifest()
		if err != nil {
			return nil, fmt.Errorf("assemble image: base manifest: %w", err)
		}
		layers, err := base.Layers()
		if err != nil {
			return nil, fmt.Errorf("assemble image: base layers: %w", err)
		}
		if len(layers) != len(m.Layers) {
			return nil, fmt.Errorf("assemble image: base has %d layers but %d manifest entries", len(layers), len(m.Layers))
		}
		for i, l := range layers {
			d := m.Layers[i]
			mt := relabel(d.MediaType, oci)
			adds = append(adds, mutate.Addendum{
				Layer:       relabelLayer(l, d.MediaType, mt),
				MediaType:   mt,
				URLs:        d.URLs,
				Annotations: d.Annotations,
			})
		}
	}
	for i, l := range added {
		mt, err := l.MediaType()
		if err != nil {
			return nil, fmt.Errorf("assemble image: layer %d media type: %w", i, err)
		}
		to := relabel(mt, oci)
		adds = append(adds, mutate.Addendum{Layer: relabelLayer(l, mt, to), MediaType: to})
	}

	diffIDs := make([]v1.Hash, 0, len(adds))
	for i, a := range adds {
		d, err := a.Layer.DiffID()
		if err != nil {
			return nil, fmt.Errorf("assemble image: layer %d diffID: %w", i, err)
		}
		diffIDs = append(diffIDs, d)
	}

	img := mutate.MediaType(empty.Image, manifestType)
	img = mutate.ConfigMediaType(img, configType)
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, fmt.Errorf("assemble image: %w", err)
	}
	out := cfg.DeepCopy()
	out.RootFS = v1.RootFS{Type: "layers", DiffIDs: diffIDs}
	img, err = mutate.ConfigFile(img, out)
	if err != nil {
		return nil, fmt.Errorf("assemble image: config: %w", err)
	}
	return img, nil
}

// relabel maps a layer media type into the chosen family. Only types with a
// twin in the other family change; zstd has no Docker twin.
func relabel(mt types.MediaType, oci bool) types.MediaType {
	if oci {
		switch mt {
		case types.DockerLayer:
			return types.OCILayer
		case types.DockerUncompressedLayer:
			return types.OCIUncompressedLayer
		case types.DockerForeignLayer:
			return types.OCIRestrictedLayer
		}
		return mt
	}
	switch mt {
	case types.OCILayer:
		return types.DockerLayer
	case types.OCIUncompressedLayer:
		return types.DockerUncompressedLayer
	case types.OCIRestrictedLayer:
		return types.DockerForeignLayer
	}
	return mt
}

// relabelLayer wraps l only when its media type changes, so layers that
// carry optional powers (a remote layer's cross-repo mount, for one) keep
// them whenever possible.
func relabelLayer(l v1.Layer, from, to types.MediaType) v1.Layer {
	if from == to {
		return l
	}
	return &relabelled{Layer: l, mediaType: to}
}

// relabelled is a layer whose media type is reported differently; bytes and
// digests are the underlying layer's.
type relabelled struct {
	v1.Layer
	mediaType types.MediaType
}

func (r *relabelled) MediaType() (types.MediaType, error) { return r.mediaType, nil }
