package solver

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-build/kiln/internal/dockerfile"
	"github.com/kiln-build/kiln/internal/output"
	"github.com/kiln-build/kiln/internal/plan"
	"github.com/kiln-build/kiln/internal/progress"
)

// buildPlatforms builds o for each of o.Platforms and exports one image
// index holding an image per platform, as BuildKit does for --platform
// a,b. Each platform has a builder of its own, running at once with the
// others: its own stages, keys (every key covers the stage's platform, so
// what differs is never shared) and root filesystems. What is the same
// for every platform is built once: a stage FROM --platform=$BUILDPLATFORM
// that does not use TARGETPLATFORM has the same keys in every builder,
// and the second finds the first's result in kiln's cache, as a second
// build would. Each builder writes its own steps to the caches; the
// outputs are written once every platform is built, so a failure in any
// exports nothing.
func buildPlatforms(ctx context.Context, o Options, tr *progress.Tracker) (*Result, error) {
	seen := map[string]bool{}
	for _, p := range o.Platforms {
		n, err := ParsePlatform(p.String())
		if err != nil {
			return nil, err
		}
		if seen[n.String()] {
			return nil, fmt.Errorf("--platform: %s is given twice", n)
		}
		seen[n.String()] = true
	}
	for _, spec := range o.Outputs {
		// Refused before any work rather than after it.
		if spec.Type == output.TypeDocker {
			return nil, fmt.Errorf("output type=docker: %w: the docker exporter loads one platform's image; build one --platform, or use type=oci or type=registry", output.ErrMultiPlatform)
		}
	}
	n := len(o.Platforms)
	ids := new(atomic.Int32)
	builders := make([]*builder, n)
	preps := make([]*exportPrep, n)
	ready := make(chan int, n)
	exported := make(chan struct{})
	var res *Result
	var exportErr error
	g, gctx := errgroup.WithContext(ctx)
	for i, p := range o.Platforms {
		po := o
		po.Platform, po.Platforms = p, nil
		b := &builder{opts: po, sink: tr, images: map[string]*stage{}, ids: ids, multi: true}
		builders[i] = b
		b.finish = func(ctx context.Context, s *stage) (*Result, error) {
			prep, err := b.prepareExport(ctx, s)
			if err != nil {
				return nil, err
			}
			if err := b.exportCaches(ctx, s); err != nil {
				return nil, err
			}
			preps[i] = prep
			ready <- i
			// The builder's directory holds what the outputs read (its
			// layers): it stays until they are written.
			select {
			case <-exported:
				return nil, exportErr
			case <-gctx.Done():
				return nil, gctx.Err()
			}
		}
		g.Go(func() error {
			if _, err := build(gctx, b); err != nil {
				return fmt.Errorf("%s: %w", b.platform, err)
			}
			return nil
		})
	}
	if !o.DryRun {
		g.Go(func() error {
			for range n {
				select {
				case <-ready:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			res, exportErr = writeIndex(gctx, builders, preps)
			close(exported)
			return exportErr
		})
	}
	err := g.Wait()
	merged := &Result{}
	if res != nil {
		merged = res
	}
	for _, b := range builders {
		b.fillSteps(merged)
	}
	sort.Slice(merged.Steps, func(i, j int) bool { return merged.Steps[i].ID < merged.Steps[j].ID })
	if err != nil {
		tr.EndOpen()
		failed := &Result{Failed: true, Error: err.Error(), Steps: merged.Steps, Totals: merged.Totals, Mounts: merged.Mounts}
		return failed, err
	}
	merged.Plan = &plan.Plan{}
	for _, b := range builders {
		if b.plan == nil {
			continue
		}
		for _, st := range b.plan.Stages {
			st.Name = b.platform.String() + " " + st.Name
			merged.Plan.Stages = append(merged.Plan.Stages, st)
		}
	}
	if !o.DryRun {
		emitSummary(tr, merged)
	}
	return merged, nil
}

// writeIndex writes every output once: an index of the platforms' images
// (in --platform order) for image outputs, a directory per platform
// (linux_arm64, ...) for type=local, as BuildKit's platform-split does.
func writeIndex(ctx context.Context, builders []*builder, preps []*exportPrep) (*Result, error) {
	first := builders[0]
	specs := preps[0].specs
	indexes := make([]v1.ImageIndex, len(specs))
	for j, spec := range specs {
		mt := types.DockerManifestList
		if spec.OCIMediaTypes {
			mt = types.OCIImageIndex
		}
		idx := mutate.IndexMediaType(empty.Index, mt)
		for i, b := range builders {
			p := ociPlatform(b.platform)
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: preps[i].imgs[j], Descriptor: v1.Descriptor{Platform: &p}})
		}
		indexes[j] = idx
	}
	rootfs := func(ctx context.Context, dir string) error {
		for i, b := range builders {
			if err := preps[i].rootfs(ctx, filepath.Join(dir, platformDir(b.platform))); err != nil {
				return fmt.Errorf("%s: %w", b.platform, err)
			}
		}
		return nil
	}
	return first.writeOutputs(ctx, specs, func(j int) output.Image {
		return output.Image{Index: indexes[j], Tags: first.opts.Tags, Rootfs: rootfs}
	})
}

// platformDir is the directory a platform's files go to in a split
// type=local output: linux_arm64, linux_arm_v7.
func platformDir(p dockerfile.Platform) string {
	return strings.ReplaceAll(p.String(), "/", "_")
}
