package build

import (
	"context"
	"fmt"
	"maps"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/output"
	"github.com/kiln-build/kiln/internal/snapshot"
)

// Result is what a build produced.
type Result struct {
	// Digest, ConfigDigest, Size and Names describe the image as the first
	// output wrote it.
	Digest       v1.Hash
	ConfigDigest v1.Hash
	Size         int64
	Names        []string
	// MediaType and ManifestSize describe the manifest itself.
	MediaType    string
	ManifestSize int64
	// Outputs has one entry per output, in the order given.
	Outputs []output.Result
}

// layerOptions picks layer compression and media types from the outputs:
// layers are written once, so the first output that asks for a compression
// or for OCI media types decides.
func layerOptions(o Options) (image.LayerOptions, error) {
	lo := image.LayerOptions{Compression: image.Gzip, Epoch: o.Epoch}
	for _, spec := range o.Outputs {
		if spec.Compression != "" {
			c, err := image.ParseCompression(spec.Compression)
			if err != nil {
				return lo, fmt.Errorf("output type=%s: %w", spec.Type, err)
			}
			lo.Compression = c
			break
		}
	}
	if len(o.Outputs) > 0 {
		lo.OCI = o.Outputs[0].OCIMediaTypes
	}
	return lo, nil
}

// export assembles the target stage's image and writes every output. It
// runs only after every stage succeeded, so a failed build exports nothing.
func (b *builder) export(ctx context.Context, s *stage) (*Result, error) {
	cfg := s.cfg.DeepCopy()
	cfg.Created = v1.Time{Time: b.created}
	cfg.Architecture = b.platform.Architecture
	cfg.OS = b.platform.OS
	if len(b.opts.Labels) > 0 {
		if cfg.Config.Labels == nil {
			cfg.Config.Labels = map[string]string{}
		}
		maps.Copy(cfg.Config.Labels, b.opts.Labels)
	}
	specs := b.opts.Outputs
	if len(specs) == 0 {
		specs = []output.Spec{{Type: "store"}}
	}
	env := output.Env{Registry: b.opts.Registry, StoreDir: b.opts.StoreDir, DockerHost: b.opts.DockerHost}
	rootfs := func(ctx context.Context, dir string) error {
		ls, err := s.layers()
		if err != nil {
			return err
		}
		return snapshot.Materialize(ctx, dir, ls)
	}
	res := &Result{}
	for i, spec := range specs {
		img, err := image.Assemble(s.base, cfg, s.added, spec.OCIMediaTypes)
		if err != nil {
			return nil, fmt.Errorf("assemble image: %w", err)
		}
		if s.startInterval != 0 {
			if img, err = withHealthStartInterval(img, s.startInterval); err != nil {
				return nil, err
			}
		}
		id, start := b.start(nil, "exporting to "+spec.Type)
		out, err := output.Export(ctx, spec, output.Image{Image: img, Tags: b.opts.Tags, Rootfs: rootfs}, env)
		if err != nil {
			b.fail(id, start, err)
			return nil, fmt.Errorf("output type=%s: %w", spec.Type, err)
		}
		b.done(id, start)
		res.Outputs = append(res.Outputs, out)
		if i == 0 {
			res.Digest, res.ConfigDigest, res.Size, res.Names = out.Digest, out.ConfigDigest, out.Size, out.Names
			if mt, err := img.MediaType(); err == nil {
				res.MediaType = string(mt)
			}
			if raw, err := img.RawManifest(); err == nil {
				res.ManifestSize = int64(len(raw))
			}
		}
	}
	return res, nil
}
