package solver

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/output"
	"github.com/kiln-build/kiln/internal/ownership"
	"github.com/kiln-build/kiln/internal/plan"
	"github.com/kiln-build/kiln/internal/progress"
	"github.com/kiln-build/kiln/internal/registry"
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
	// Steps is the build summary: one entry per layer step, cached or
	// built, with durations and bytes moved; Totals adds them up.
	Steps  []StepReport
	Totals Totals
	// Mounts are the cache mounts restored or saved, by id.
	Mounts []MountReport
	// Failed and Error are set on the Result a failed build returns with
	// its error: the steps that ran are in Steps, the rest is empty.
	Failed bool
	Error  string
	// Plan is what the build predicted before running anything; all a
	// dry run returns.
	Plan *plan.Plan
}

// Totals sums the build summary.
type Totals struct {
	Steps      int   `json:"steps"`
	Cached     int   `json:"cached"`
	Downloaded int64 `json:"bytesDownloaded"`
	Uploaded   int64 `json:"bytesUploaded"`
	// Recompressed counts the cached layers re-encoded for the image: a
	// cache-only (zstd) layer that an image now contains.
	Recompressed int `json:"layersRecompressed"`
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
			lo.Level = specLevel(spec)
			break
		}
	}
	if len(o.Outputs) > 0 {
		lo.OCI = o.Outputs[0].OCIMediaTypes
	}
	return lo, nil
}

// cacheLayerOptions picks the encoding of blobs that only the cache holds:
// the first --cache-to that asks for a compression decides, as outputs do
// for image layers; by default zstd. BuildKit defaults to gzip there, for
// any tool that might read its cache; kiln's cache is read by kiln alone,
// and zstd writes faster and extracts faster at a smaller size.
func cacheLayerOptions(o Options, img image.LayerOptions) (image.LayerOptions, error) {
	lo := image.LayerOptions{Compression: image.Zstd, OCI: img.OCI, Epoch: o.Epoch}
	for _, spec := range o.CacheTo {
		if spec.Compression != "" {
			c, err := image.ParseCompression(spec.Compression)
			if err != nil {
				return lo, fmt.Errorf("--cache-to %s: %w", spec, err)
			}
			lo.Compression, lo.Level = c, spec.CompressionLevel
			break
		}
	}
	return lo, nil
}

// export assembles the target stage's image, writes the caches while the
// image's blobs go up, then writes every output. It runs only after every
// stage succeeded, so a failed build exports nothing.
func (b *builder) export(ctx context.Context, s *stage) (*Result, error) {
	p, err := b.prepareExport(ctx, s)
	if err != nil {
		return nil, err
	}
	// The image's blobs go up while the caches are written; its manifest
	// and tags only after. A --cache-to that fails (without ignore-error)
	// fails the build before any output is written, so a failed build
	// never leaves a pushed image behind: at most blobs no manifest names.
	sent := b.sendAhead(ctx, p.specs, p.imgs)
	if err := b.exportCaches(ctx, s); err != nil {
		sent.cancel()
		sent.wait()
		return nil, err
	}
	sent.wait()
	res, err := b.writeOutputs(ctx, p.specs, func(i int) output.Image {
		return output.Image{Image: p.imgs[i], Tags: b.opts.Tags, Rootfs: p.rootfs}
	})
	if err != nil {
		return nil, err
	}
	b.summarize(res)
	return res, nil
}

// exportPrep is a target stage made ready for the outputs: one image per
// output (force-compression and the inline cache differ between them),
// and the writer of its root filesystem for type=local.
type exportPrep struct {
	specs  []output.Spec
	imgs   []v1.Image
	rootfs func(ctx context.Context, dir string) error
}

// prepareExport finishes the target stage's config and assembles its
// image for every output.
func (b *builder) prepareExport(ctx context.Context, s *stage) (*exportPrep, error) {
	cfg := s.cfg.DeepCopy()
	cfg.Created = v1.Time{Time: fillCreated(cfg.History[s.baseHist:], b.created)}
	cfg.Architecture, cfg.OS, cfg.Variant = s.platform.Arch, s.platform.OS, s.platform.Variant
	if len(b.opts.Labels) > 0 {
		if cfg.Config.Labels == nil {
			cfg.Config.Labels = map[string]string{}
		}
		maps.Copy(cfg.Config.Labels, b.opts.Labels)
	}
	p := &exportPrep{specs: b.opts.Outputs}
	if len(p.specs) == 0 {
		p.specs = []output.Spec{{Type: "store"}}
	}
	for _, spec := range p.specs {
		// What a kill during this export leaves next to the dest is
		// removed by the next kiln command.
		if spec.Dest != "" && spec.Dest != "-" {
			if err := b.state.RecordOwned(output.TempPattern(spec.Dest, b.state.ID())); err != nil {
				return nil, err
			}
		}
	}
	p.rootfs = func(ctx context.Context, dir string) error {
		ls, err := s.layers()
		if err != nil {
			return err
		}
		if err := snapshot.Materialize(ctx, dir, ls); err != nil {
			return err
		}
		return ownership.Forget(dir)
	}
	// Before the caches, so they record the layers as the image has them.
	if err := b.imageEncoding(ctx, s); err != nil {
		return nil, err
	}
	p.imgs = make([]v1.Image, len(p.specs))
	for i, spec := range p.specs {
		img, err := b.assemble(ctx, s, spec, cfg)
		if err != nil {
			return nil, err
		}
		p.imgs[i] = img
	}
	return p, nil
}

// writeOutputs writes what each output's image(i) holds to it, in order.
func (b *builder) writeOutputs(ctx context.Context, specs []output.Spec, image func(i int) output.Image) (*Result, error) {
	env := output.Env{Registry: b.opts.Registry, StoreDir: b.opts.StoreDir, BlobDir: b.caches.local.BlobDir(), DockerHost: b.opts.DockerHost,
		TempTag: b.state.ID()}
	res := &Result{}
	for i, spec := range specs {
		img := image(i)
		id, start := b.start(nil, "exporting to "+spec.Type)
		done := b.uploading.begin(spec.Type == "registry")
		out, err := output.Export(ctx, spec, img, env)
		done()
		if err != nil {
			b.fail(id, start, err)
			return nil, fmt.Errorf("output type=%s: %w", spec.Type, err)
		}
		b.done(id, start)
		res.Outputs = append(res.Outputs, out)
		if i == 0 {
			res.Digest, res.ConfigDigest, res.Size, res.Names = out.Digest, out.ConfigDigest, out.Size, out.Names
			var t interface {
				MediaType() (types.MediaType, error)
				RawManifest() ([]byte, error)
			} = img.Image
			if img.Index != nil {
				t = img.Index
			}
			if mt, err := t.MediaType(); err == nil {
				res.MediaType = string(mt)
			}
			if raw, err := t.RawManifest(); err == nil {
				res.ManifestSize = int64(len(raw))
			}
		}
	}
	return res, nil
}

// assemble makes the image one output writes.
func (b *builder) assemble(ctx context.Context, s *stage, spec output.Spec, cfg *v1.ConfigFile) (v1.Image, error) {
	base, added := s.base, s.added
	if spec.ForceCompression {
		var err error
		if base, added, err = b.forceCompression(ctx, s, spec); err != nil {
			return nil, fmt.Errorf("output type=%s: force-compression: %w", spec.Type, err)
		}
	}
	img, err := image.Assemble(base, cfg, added, spec.OCIMediaTypes)
	if err != nil {
		return nil, fmt.Errorf("assemble image: %w", err)
	}
	if s.startInterval != 0 {
		if img, err = withHealthStartInterval(img, s.startInterval); err != nil {
			return nil, err
		}
	}
	if spec.Type == "registry" {
		// Inline cache: the pushed image names its layers' keys, so
		// --cache-from type=registry,ref=<this image> works.
		if img, err = withInlineCache(img, s); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// sending is the blob uploads sendAhead started.
type sending struct {
	cancel context.CancelFunc
	wait   func()
}

// sendAhead starts uploading the blobs of every registry output's image
// (registry.UploadBlobs: no manifest), to overlap with the cache export.
// Layers the cache export stages are left to the push, so no blob goes up
// twice at once. Its errors are dropped: the push that follows sends
// whatever is missing and reports its own failure as it always did. Only
// when every --cache-to is a registry: layer reads count as uploaded bytes
// while a registry push runs (b.uploading), and a local cache export's
// reads beside these uploads would be counted too.
func (b *builder) sendAhead(ctx context.Context, specs []output.Spec, imgs []v1.Image) sending {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	s := sending{cancel: cancel, wait: func() { wg.Wait(); cancel() }}
	if len(b.opts.CacheTo) == 0 {
		return s // nothing to overlap with
	}
	for _, spec := range b.opts.CacheTo {
		if spec.Type != "registry" {
			return s
		}
	}
	skip := b.cacheStaged()
	for i, spec := range specs {
		if spec.Type != "registry" {
			continue
		}
		tags, err := output.NormalizeNames(append(append([]string(nil), b.opts.Tags...), spec.Names...))
		if err != nil || len(tags) == 0 {
			continue // the export reports it
		}
		done := b.uploading.begin(true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer done()
			_ = registry.UploadBlobs(ctx, imgs[i], tags, skip, b.opts.Registry)
		}()
	}
	return s
}

// cacheStaged is the set of layer blobs the cache export may upload: those
// of every record this build used or made.
func (b *builder) cacheStaged() map[v1.Hash]bool {
	b.caches.mu.Lock()
	defer b.caches.mu.Unlock()
	staged := make(map[v1.Hash]bool, len(b.caches.used))
	for _, r := range b.caches.used {
		if !r.rec.Layer.IsZero() {
			staged[r.rec.Layer.Digest] = true
		}
	}
	return staged
}

// uploadGauge counts the registry uploads running (image pushes, registry
// cache exports), which may overlap: while any runs, layer reads count as
// uploaded bytes.
type uploadGauge struct{ n atomic.Int32 }

// begin marks an upload running when on, until the returned func is called.
func (g *uploadGauge) begin(on bool) (end func()) {
	if !on {
		return func() {}
	}
	g.n.Add(1)
	return func() { g.n.Add(-1) }
}

// Load reports whether an upload is running.
func (g *uploadGauge) Load() bool { return g.n.Load() > 0 }

// fillCreated gives this build's history entries their times as BuildKit's
// exporter does: a layer step keeps its own (for a cache hit, when the
// layer was first built), and a metadata step takes the nearest earlier
// layer's — or the first layer's when none comes before. The image's
// created time is the last entry's. So a fully cached build reproduces its
// image digest. fallback serves when no entry has a time.
func fillCreated(hist []v1.History, fallback time.Time) time.Time {
	var first time.Time
	for _, h := range hist {
		if !h.Created.Time.IsZero() {
			first = h.Created.Time
			break
		}
	}
	if first.IsZero() {
		first = fallback
	}
	last := first
	for i := range hist {
		if hist[i].Created.Time.IsZero() {
			hist[i].Created = v1.Time{Time: last}
		} else {
			last = hist[i].Created.Time
		}
	}
	return last
}

// summarize fills the build summary and prints its closing line.
func (b *builder) summarize(res *Result) {
	b.fillSteps(res)
	emitSummary(b.sink, res)
}

// emitSummary prints the build summary's closing lines.
func emitSummary(sink progress.Sink, res *Result) {
	line := fmt.Sprintf("summary: %d steps, %d cached, %d built; %s downloaded, %s uploaded",
		res.Totals.Steps, res.Totals.Cached, res.Totals.Steps-res.Totals.Cached,
		humanBytes(res.Totals.Downloaded), humanBytes(res.Totals.Uploaded))
	if n := res.Totals.Recompressed; n > 0 {
		line += fmt.Sprintf("; %d cached layers recompressed for the image", n)
	}
	sink.Emit(progress.Event{Status: progress.Summary, Log: line})
	for _, st := range res.Steps {
		if !st.Cached && st.Reason != "" {
			sink.Emit(progress.Event{Status: progress.Summary, Log: fmt.Sprintf("  #%d %s: rebuilt because %s", st.ID, st.Name, st.Reason)})
		}
	}
	for _, m := range res.Mounts {
		if l := m.line(); l != "" {
			sink.Emit(progress.Event{Status: progress.Summary, Log: "  " + l})
		}
	}
}

// fillSteps fills the steps and totals of the build summary.
func (b *builder) fillSteps(res *Result) {
	b.caches.mu.Lock()
	steps := append([]*stepStat(nil), b.caches.steps...)
	b.caches.mu.Unlock()
	sort.Slice(steps, func(i, j int) bool { return steps[i].ID < steps[j].ID })
	for _, st := range steps {
		rep := st.StepReport
		rep.Uploaded = st.uploaded.Load()
		res.Steps = append(res.Steps, rep)
		res.Totals.Steps++
		if rep.Cached {
			res.Totals.Cached++
		}
		res.Totals.Uploaded += rep.Uploaded
	}
	res.Totals.Uploaded += b.caches.unstepped.Load()
	res.Mounts = append(res.Mounts, b.mountReps.list()...)
	res.Totals.Downloaded += b.downloaded.Load()
	b.recompressed.mu.Lock()
	res.Totals.Recompressed += b.recompressed.forImage
	b.recompressed.mu.Unlock()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
