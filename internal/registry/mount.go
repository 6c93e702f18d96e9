package registry

import (
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// MountFrom returns img with every layer marked as present in the
// repository of from. When the image is pushed to another repository of the
// same registry, layers the registry lacks in the target are cross-repo
// mounted from there (one request, no bytes) instead of uploaded; if a
// layer is not actually there, the registry refuses the mount and the
// layer is uploaded as usual. Use it for images whose base layers came from
// a cache repository or base image on the push registry.
func MountFrom(img v1.Image, from name.Reference) v1.Image {
	return &mountableImage{Image: img, from: from}
}

// mountableImage makes remote.Write try cross-repository mounts for its
// layers, which ggcr does for *remote.MountableLayer values.
type mountableImage struct {
	v1.Image
	from name.Reference
}

func (m *mountableImage) Layers() ([]v1.Layer, error) {
	ls, err := m.Image.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]v1.Layer, len(ls))
	for i, l := range ls {
		out[i] = &remote.MountableLayer{Layer: l, Reference: m.from}
	}
	return out, nil
}

func (m *mountableImage) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	l, err := m.Image.LayerByDigest(h)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", h, err)
	}
	return &remote.MountableLayer{Layer: l, Reference: m.from}, nil
}
