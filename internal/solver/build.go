package solver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-build/kiln/internal/buildctx"
	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/cachekey"
	"github.com/kiln-build/kiln/internal/dockerfile"
	"github.com/kiln-build/kiln/internal/executor"
	"github.com/kiln-build/kiln/internal/gc"
	"github.com/kiln-build/kiln/internal/graph"
	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/plan"
	"github.com/kiln-build/kiln/internal/progress"
	"github.com/kiln-build/kiln/internal/registry"
	"github.com/kiln-build/kiln/internal/snapshot"
	"github.com/kiln-build/kiln/internal/state"
)

// ErrUnsupported marks Dockerfile features kiln does not implement yet.
var ErrUnsupported = errors.New("not supported yet")

// builder holds one build's state.
type builder struct {
	opts    Options
	df      *dockerfile.Dockerfile
	globals *dockerfile.Vars
	stages  []*stage
	graph   *graph.Graph
	target  int
	bctx    *buildctx.Context
	state   *state.Build // this build's own locked directory
	tmp     string       // state.TempDir(): TMPDIR/kiln-build-ID
	created time.Time
	// platform is the target platform, which stages build for unless
	// their FROM --platform says otherwise (stage.platform).
	platform dockerfile.Platform
	// multi: one of several platforms' builders (multiplatform.go): step
	// names carry the platform, and finish replaces the export.
	multi   bool
	finish  func(ctx context.Context, s *stage) (*Result, error)
	plan    *plan.Plan         // what the build predicted, once planned
	layer   image.LayerOptions // layers of the image's FROM chain
	sink    progress.Sink
	ids     *atomic.Int32 // shared by a multi-platform build's builders
	ownRoot string        // a temporary state root made for this build alone

	// cacheLayer encodes the blobs only the cache holds (compress.go).
	cacheLayer image.LayerOptions

	imagesMu sync.Mutex
	images   map[string]*stage // COPY --from=<image>: pulled once per build

	// The snapshotter and executor are made on first use, so a Dockerfile
	// without RUN never needs runc, and one with only metadata never
	// probes overlay support.
	snapOnce  sync.Once
	snap      snapshot.Snapshotter
	snapErr   error
	execOnce  sync.Once
	exec      executor.Executor
	execErr   error
	mountsDir string // RUN --mount=type=cache directories
	// lease pins what this build uses in kiln's directory (disk.go).
	lease *gc.Lease

	caches stepCache
	// mountReps are the cache mounts restored and saved (mountcache.go).
	mountReps mountReports
	// alts are the zstd copies of base layers (altlayers.go).
	alts alternates
	// prefetches are the downloads misses started in the background;
	// planCtx is what those the plan starts run under: the planning
	// stages' own contexts end with planning, long before the layers are
	// needed.
	prefetches prefetches
	planCtx    context.Context
	// recompressed holds layers re-encoded for force-compression outputs.
	recompressed recompressed
	downloaded   atomic.Int64 // blob bytes fetched from registries
	uploading    uploadGauge  // registry pushes running: count layer reads as uploads

	// planning: the build is deciding its plan (see buildStage); set
	// before and cleared after the stages plan, never while they run.
	planning bool

	// ctx is the whole build's context. Lazy layers (cache hits, images
	// named by --from) fetch with it when read, possibly long after the
	// step that found them has returned and its context was cancelled.
	ctx context.Context
}

func (b *builder) snapshotter() (snapshot.Snapshotter, error) {
	b.snapOnce.Do(func() {
		root := filepath.Join(b.tmp, "snapshots")
		if b.opts.CacheDir != "" {
			root = filepath.Join(b.opts.CacheDir, "snapshots")
		}
		b.snap, b.snapErr = snapshot.New(b.opts.Snapshotter, root, snapshot.WithPin(b.lease.Pin), snapshot.WithActiveDir(b.state.SnapshotDir()))
		if b.snapErr != nil {
			b.snapErr = fmt.Errorf("--snapshotter=%s: %w", b.opts.Snapshotter, b.snapErr)
		}
	})
	return b.snap, b.snapErr
}

func (b *builder) executor() (executor.Executor, error) {
	b.execOnce.Do(func() {
		// The executor's bundles (runc's config.json holds the environment,
		// env= secrets included) live on the build's tmpfs only.
		mem, err := b.state.Mem()
		if err != nil {
			b.execErr = fmt.Errorf("RUN: %w", err)
			return
		}
		b.exec, b.execErr = executor.New(b.opts.Isolation, executor.Config{Dir: mem, RuncRoot: state.RuncRoot(mem)})
		if b.execErr != nil {
			b.execErr = fmt.Errorf("--isolation=%s: %w", b.opts.Isolation, b.execErr)
		}
	})
	return b.exec, b.execErr
}

// Build runs one build and writes its outputs.
//
// A build that fails returns its error and a Result with Failed and Error
// set and the steps that ran (for --report); every step it announced has
// ended, as failed if nothing else ended it.
func Build(ctx context.Context, o Options) (*Result, error) {
	tr := progress.Track(o.Progress)
	if len(o.Platforms) > 1 {
		return buildPlatforms(ctx, o, tr)
	}
	if len(o.Platforms) == 1 {
		o.Platform = o.Platforms[0]
	}
	b := &builder{opts: o, sink: tr, images: map[string]*stage{}}
	res, err := build(ctx, b)
	if err != nil {
		tr.EndOpen()
		res = &Result{Failed: true, Error: err.Error()}
		b.fillSteps(res)
		return res, err
	}
	return res, nil
}

func build(ctx context.Context, b *builder) (*Result, error) {
	if b.opts.DryRun && b.opts.CacheDir != "" {
		// A dry run on a machine without kiln's directory has nothing in
		// it to read, and making it would change the disk: it plans in a
		// root of its own, removed afterwards.
		if _, err := os.Stat(b.opts.CacheDir); errors.Is(err, fs.ErrNotExist) {
			b.opts.CacheDir = ""
		}
	}
	o := b.opts
	b.ctx = ctx
	if b.sink == nil {
		b.sink = progress.Discard
	}
	if err := b.setPlatform(); err != nil {
		return nil, err
	}
	b.created = time.Now().UTC().Truncate(time.Second)
	if o.Epoch != nil {
		b.created = o.Epoch.UTC()
	}
	name := o.DockerfileName
	if name == "" {
		name = "Dockerfile"
	}
	df, err := dockerfile.Parse(name, o.Dockerfile)
	if err != nil {
		return nil, err
	}
	b.df = df
	bctx, err := buildctx.Open(o.ContextDir, o.DockerfilePath)
	if err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	}
	b.bctx = bctx
	if b.layer, err = layerOptions(o); err != nil {
		return nil, err
	}
	if b.cacheLayer, err = cacheLayerOptions(o, b.layer); err != nil {
		return nil, err
	}
	wrap := o.Registry.Wrap
	b.opts.Registry.Wrap = func(t http.RoundTripper) http.RoundTripper {
		if wrap != nil {
			t = wrap(t)
		}
		return &countingTransport{next: t, down: &b.downloaded}
	}
	defer b.startStores(ctx)()
	if err := b.prepare(ctx); err != nil {
		return nil, err
	}
	if err := b.beginState(); err != nil {
		return nil, err
	}
	// The whole state root when the build made its own, else its tmp.
	own := b.tmp
	if b.ownRoot != "" {
		own = b.ownRoot
	}
	b.bctx.Hide(o.ownPaths(own)...)
	// Opened before, closed after the views: nothing a view mounts is
	// collected while it is mounted.
	if err := b.openLease(); err != nil {
		b.endState()
		return nil, err
	}
	defer b.lease.Close()
	defer func() {
		// Views first: nothing may stay mounted under tmp.
		b.dropRoots()
		b.endState()
	}()
	b.layer.Dir, b.cacheLayer.Dir = b.tmp, b.tmp
	b.alts.ctx, b.alts.cancel = context.WithCancel(ctx)
	// Before the build's directory goes: transcodes write into it.
	defer b.alts.stop()
	b.mountsDir = filepath.Join(b.tmp, "mounts")
	if o.CacheDir != "" {
		b.mountsDir = filepath.Join(o.CacheDir, "mounts")
	}
	unlock, err := b.openCaches(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()

	needed, err := b.graph.Needed(b.target)
	if err != nil {
		return nil, err
	}
	par := o.Parallelism
	if par < 1 {
		// Unset: no cap, every ready stage runs (on 2 cores the third of
		// three independent stages no longer waits for a slot).
		par = max(len(needed), 1)
	}
	// Plan every stage, then run what the plan left to do.
	b.planning = true
	planCtx, cancelPrefetch := context.WithCancel(ctx)
	defer cancelPrefetch()
	b.planCtx = planCtx
	for _, i := range needed {
		b.stages[i].plan = plan.NewStage(b.stages[i].name)
	}
	err = b.graph.Run(ctx, needed, par, b.buildStage)
	b.planning = false
	if err != nil {
		cancelPrefetch()
		b.prefetches.wait()
		return nil, err
	}
	p := &plan.Plan{}
	for _, i := range needed {
		p.Stages = append(p.Stages, b.stages[i].plan)
	}
	b.plan = p
	if o.DryRun {
		res := &Result{Plan: p}
		b.fillSteps(res)
		return res, nil
	}
	// Whatever a step reads the stores for beyond its lookup (cache
	// mounts, zstd copies of base layers) sees every one.
	if err := b.caches.ready(ctx); err != nil {
		cancelPrefetch()
		b.prefetches.wait()
		return nil, err
	}
	err = b.graph.Run(ctx, needed, par, b.buildStage)
	// The stages' contexts are cancelled now, and so are the plan's
	// prefetches (every step that needed them has run or failed);
	// nothing may still extract into the build's directory when it is
	// removed.
	cancelPrefetch()
	b.prefetches.wait()
	if err != nil {
		return nil, err
	}
	finish := b.finish
	if finish == nil {
		finish = b.export
	}
	res, err := finish(ctx, b.stages[b.target])
	if res != nil {
		res.Plan = p
	}
	return res, err
}

// beginState takes this build's own directory under kiln's root (CacheDir;
// without one, a temporary root removed afterwards), locked for the
// build's whole life: everything transient the build makes lives in it or
// is recorded in it, so the next kiln command can clean up after a crash.
func (b *builder) beginState() error {
	root := b.opts.CacheDir
	if root == "" {
		tmp, err := os.MkdirTemp(b.opts.TempDir, "kiln-build-")
		if err != nil {
			return fmt.Errorf("create build directory: %w", err)
		}
		root, b.ownRoot = tmp, tmp
	}
	st, err := state.Begin(root, b.opts.TempDir)
	if err != nil {
		if b.ownRoot != "" {
			os.RemoveAll(b.ownRoot)
		}
		return err
	}
	b.state, b.tmp = st, st.TempDir()
	// Partial blobs a kill leaves in type=local cache dests (and kiln's
	// own cache) are removed by the next sweep once no writer is active.
	dirs := []string{filepath.Join(root, "cache")}
	for _, spec := range b.opts.CacheTo {
		if spec.Type == "local" {
			dirs = append(dirs, spec.Dir)
		}
	}
	for _, d := range dirs {
		lockPath, tmpDir := cache.PartialFiles(d)
		if err := st.RecordPartial(lockPath, tmpDir); err != nil {
			return err
		}
	}
	return nil
}

// endState removes the build's directory (and a root made for it alone).
func (b *builder) endState() {
	if err := b.state.Close(); err != nil {
		b.warn(fmt.Sprintf("cleaning up the build directory: %v", err))
	}
	if b.ownRoot != "" {
		os.RemoveAll(b.ownRoot)
	}
}

// setPlatform normalizes the target platform (the host's when unset), as
// BuildKit does: "linux/arm64/v8" is linux/arm64, "linux/arm" is
// linux/arm/v7.
func (b *builder) setPlatform() error {
	if b.ids == nil {
		b.ids = new(atomic.Int32)
	}
	p := b.opts.Platform
	if p.OS == "" {
		p = HostPlatform()
	}
	n, err := ParsePlatform(p.String())
	if err != nil {
		return err
	}
	b.opts.Platform, b.platform = n, n
	return nil
}

// HostPlatform is the machine's own platform: BUILDPLATFORM.
func HostPlatform() dockerfile.Platform {
	p := platforms.DefaultSpec()
	return dockerfile.Platform{OS: p.OS, Arch: p.Architecture, Variant: p.Variant}
}

// ParsePlatform reads one platform ("linux/arm64", "linux/arm/v7") and
// normalizes it as BuildKit does. Only Linux platforms build.
func ParsePlatform(s string) (dockerfile.Platform, error) {
	spec, err := platforms.Parse(s)
	if err != nil {
		return dockerfile.Platform{}, fmt.Errorf("platform %q: %w", s, err)
	}
	spec = platforms.Normalize(spec)
	if spec.OS != "linux" {
		return dockerfile.Platform{}, fmt.Errorf("platform %s: only linux platforms can be built", s)
	}
	return dockerfile.Platform{OS: spec.OS, Arch: spec.Architecture, Variant: spec.Variant}, nil
}

// ociPlatform is p as image indexes and registries name it.
func ociPlatform(p dockerfile.Platform) v1.Platform {
	return v1.Platform{OS: p.OS, Architecture: p.Arch, Variant: p.Variant}
}

// prepare expands every FROM, finds each stage's dependencies, refuses what
// kiln cannot build before any work starts, and resolves base images (their
// manifests and configs only; layers stay in the registry until a step needs
// files).
func (b *builder) prepare(ctx context.Context) error {
	df := b.df
	globals, err := df.GlobalArgs(b.opts.BuildArgs, dockerfile.PlatformArgs(b.platform, HostPlatform(), df.TargetStage(b.opts.Target)))
	if err != nil {
		return err
	}
	b.globals = globals
	if b.target, err = df.Target(b.opts.Target); err != nil {
		return err
	}
	b.graph = graph.New(len(df.Stages))
	for i, def := range df.Stages {
		s := &stage{index: i, def: def, name: def.Name, commands: def.Commands}
		if s.name == "" {
			s.name = fmt.Sprintf("stage-%d", i)
		}
		base, err := df.ExpandWord(def.BaseName, globals)
		if err != nil {
			return df.Wrap(def.Location, err)
		}
		if base == "" {
			return df.Errorf(def.Location, "base name (%s) should not be blank", def.BaseName)
		}
		s.def.BaseName = base
		s.platform = b.platform
		if j, ok := b.parentStage(i, base); ok {
			// Built on a stage: that stage's files, so its platform.
			s.platform = b.stages[j].platform
		}
		if def.Platform != "" {
			p, err := df.ExpandWord(def.Platform, globals)
			if err != nil {
				return df.Wrap(def.Location, err)
			}
			if s.platform, err = ParsePlatform(p); err != nil {
				return df.Wrap(def.Location, fmt.Errorf("FROM --platform: %w", err))
			}
		}
		b.stages = append(b.stages, s)
		b.graph.Label(i, fmt.Sprintf("stage %s (%s:%d)", s.name, df.Name, dockerfile.StartLine(def.Location)))
		if j, ok := b.parentStage(i, base); ok {
			b.graph.Need(i, j)
		}
		if err := b.addDeps(s, s.commands); err != nil {
			return err
		}
	}
	// Base images may carry ONBUILD triggers that name further stages, so
	// resolve until the set of needed stages stops growing.
	resolved := map[int]bool{}
	for {
		needed, err := b.graph.Needed(b.target)
		if err != nil {
			return &dockerfile.Error{File: df.Name, Err: err}
		}
		var todo []int
		for _, i := range needed {
			if !resolved[i] {
				todo = append(todo, i)
				resolved[i] = true
			}
		}
		if len(todo) == 0 {
			return nil
		}
		// Not errgroup.WithContext: the resolved images fetch their layers
		// lazily with the context they were resolved with, which must live
		// as long as the build.
		var eg errgroup.Group
		eg.SetLimit(4)
		for _, i := range todo {
			eg.Go(func() error { return b.resolveBase(ctx, b.stages[i]) })
		}
		if err := eg.Wait(); err != nil {
			return err
		}
		for _, i := range todo {
			if err := b.addDeps(b.stages[i], b.stages[i].commands); err != nil {
				return err
			}
			if err := b.resolveFromImages(ctx, b.stages[i]); err != nil {
				return err
			}
		}
	}
}

// resolveFromImages resolves, before any work, the images that COPY
// --from names, so a typo in a stage name fails fast with its line.
func (b *builder) resolveFromImages(ctx context.Context, s *stage) error {
	for _, cmd := range s.commands {
		for _, from := range fromRefs(cmd) {
			if _, isStage := b.df.StageIndex(from); isStage {
				continue
			}
			if _, err := b.imageSource(ctx, from); err != nil {
				return b.df.Wrap(cmd.Location(), fmt.Errorf("%s %w", strings.ToUpper(cmd.Name()), err))
			}
		}
	}
	return nil
}

// parentStage reports the earlier stage a FROM names, if any: the most
// recent one, as BuildKit resolves duplicate names.
func (b *builder) parentStage(i int, base string) (int, bool) {
	l := strings.ToLower(base)
	for j := i - 1; j >= 0; j-- {
		if b.df.Stages[j].Name == l {
			return j, true
		}
	}
	return 0, false
}

// addDeps records the stages that COPY --from instructions name. As in
// BuildKit, --from takes no variables.
func (b *builder) addDeps(s *stage, cmds []instructions.Command) error {
	for _, cmd := range cmds {
		for _, from := range fromRefs(cmd) {
			if strings.Contains(from, "$") {
				return b.df.Errorf(cmd.Location(), "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround")
			}
			j, ok := b.df.StageIndex(from)
			if !ok {
				continue // an image reference
			}
			if j == s.index {
				return b.df.Errorf(cmd.Location(), "%s --from=%s: a stage cannot use itself", strings.ToUpper(cmd.Name()), from)
			}
			b.graph.Need(s.index, j)
		}
	}
	return nil
}

// fromRefs lists the stages or images an instruction reads from: COPY
// --from and RUN --mount from=.
func fromRefs(cmd instructions.Command) []string {
	switch c := cmd.(type) {
	case *instructions.CopyCommand:
		if c.From != "" {
			return []string{c.From}
		}
	case *instructions.RunCommand:
		var out []string
		for _, m := range instructions.GetMounts(c) {
			if m.From != "" {
				out = append(out, m.From)
			}
		}
		return out
	}
	return nil
}

// resolveBase sets a stage's starting image: scratch, or a registry
// image's config (its layers are not fetched). Stages built FROM another
// stage start when that stage is done, in buildStage.
func (b *builder) resolveBase(ctx context.Context, s *stage) error {
	s.steps = countSteps(s.commands)
	if j, ok := b.parentStage(s.index, s.def.BaseName); ok {
		// A stage's ONBUILD instructions fire in the stages built FROM it
		// (read from the parse result: stage j may be resolving right now).
		var triggers []string
		for _, c := range b.df.Stages[j].Commands {
			if ob, ok := c.(*instructions.OnbuildCommand); ok {
				triggers = append(triggers, ob.Expression)
			}
		}
		return b.onBuild(s, triggers)
	}
	if s.def.BaseName == "scratch" {
		s.cfg = emptyConfig(s.platform)
		s.vars = dockerfile.NewVars(s.cfg.Config.Env)
		s.baseKey = cachekey.Base(s.platform.String(), "", b.keyOptions())
		s.baseRef = "scratch"
		return nil
	}
	s.steps++ // the FROM itself
	id, start := b.start(s, "FROM "+s.def.BaseName)
	img, err := registry.Image(ctx, s.def.BaseName, ociPlatform(s.platform), b.opts.Registry)
	if err != nil {
		b.fail(id, start, err)
		return b.df.Wrap(s.def.Location, fmt.Errorf("FROM %s: %w", s.def.BaseName, err))
	}
	cf, err := img.ConfigFile()
	if err != nil {
		b.fail(id, start, err)
		return b.df.Wrap(s.def.Location, fmt.Errorf("FROM %s: read image config: %w", s.def.BaseName, err))
	}
	cfg := cf.DeepCopy()
	manifest, err := img.Digest()
	if err != nil {
		b.fail(id, start, err)
		return b.df.Wrap(s.def.Location, fmt.Errorf("FROM %s: %w", s.def.BaseName, err))
	}
	s.baseKey = cachekey.Base(s.platform.String(), manifest.String(), b.keyOptions())
	s.baseRef = manifest.String()
	s.baseHist = len(cfg.History)
	layers, err := img.Layers()
	if err != nil {
		b.fail(id, start, err)
		return b.df.Wrap(s.def.Location, fmt.Errorf("FROM %s: %w", s.def.BaseName, err))
	}
	if len(layers) > 0 {
		s.base = img
	}
	triggers := cfg.Config.OnBuild
	cfg.Config.OnBuild = nil
	// BuildKit's image type has neither field, so images it builds from a
	// docker-built base drop them; kiln matches that.
	cfg.Container = ""
	//lint:ignore SA1019 clearing the deprecated field is the point
	cfg.DockerVersion = ""
	if _, ok := dockerfile.NewVars(cfg.Config.Env).Get("PATH"); !ok {
		cfg.Config.Env = append(cfg.Config.Env, "PATH="+defaultPath)
	}
	s.cfg = cfg
	s.vars = dockerfile.NewVars(cfg.Config.Env)
	if err := b.onBuild(s, triggers); err != nil {
		b.fail(id, start, err)
		return err
	}
	b.done(id, start)
	return nil
}

// onBuild parses a base image's ONBUILD triggers and runs them first, as if
// they were written right after FROM (pinned to the FROM line).
func (b *builder) onBuild(s *stage, triggers []string) error {
	var cmds []instructions.Command
	for _, t := range triggers {
		res, err := parser.Parse(strings.NewReader(t))
		if err != nil || len(res.AST.Children) != 1 {
			return b.df.Errorf(s.def.Location, "ONBUILD trigger %q of base image %s: not a single instruction", t, s.def.BaseName)
		}
		node := res.AST.Children[0]
		line := dockerfile.StartLine(s.def.Location)
		node.StartLine, node.EndLine = line, line
		cmd, err := instructions.ParseCommand(node)
		if err != nil {
			return b.df.Wrap(s.def.Location, fmt.Errorf("ONBUILD trigger %q: %w", t, err))
		}
		cmds = append(cmds, cmd)
	}
	if len(cmds) == 0 {
		return nil
	}
	s.commands = append(cmds, s.commands...)
	s.steps += countSteps(cmds)
	return nil
}

// emptyConfig is the config of `FROM scratch`, as BuildKit makes it.
func emptyConfig(p dockerfile.Platform) *v1.ConfigFile {
	return &v1.ConfigFile{
		Architecture: p.Arch,
		OS:           p.OS,
		Variant:      p.Variant,
		RootFS:       v1.RootFS{Type: "layers"},
		Config: v1.Config{
			Env:        []string{"PATH=" + defaultPath},
			WorkingDir: "/",
		},
	}
}

func countSteps(cmds []instructions.Command) int {
	n := 0
	for _, c := range cmds {
		switch c.(type) {
		case *instructions.CopyCommand, *instructions.AddCommand, *instructions.RunCommand, *instructions.WorkdirCommand:
			n++
		}
	}
	return n
}

// buildStage runs a stage's instructions in order, from where it stands.
//
// It is called twice per stage: first while the build plans, when it
// takes the stage as far as its steps hit and stops at the first step that
// needs a result not yet made (a miss, or a --from of a stage that
// misses), listing the rest as AfterMiss; then to run the rest.
func (b *builder) buildStage(ctx context.Context, i int) error {
	s := b.stages[i]
	if !s.inherited {
		if j, ok := b.parentStage(i, s.def.BaseName); ok {
			if b.planning && !b.stages[j].complete() {
				b.planRest(s, "depends on rebuilt stage "+b.stages[j].name, 0)
				return nil
			}
			s.inherit(b.stages[j])
		}
		s.inherited = true
	}
	for ; s.next < len(s.commands); s.next++ {
		cmd := s.commands[s.next]
		if err := ctx.Err(); err != nil {
			return err
		}
		s.line = dockerfile.StartLine(cmd.Location())
		if s.stopped != nil {
			// Gathered by the planning that stopped here (WORKDIR's
			// new directory included): only the work is left.
			if err := b.runStopped(ctx, s); err != nil {
				return b.df.Wrap(cmd.Location(), err)
			}
			continue
		}
		if s.expanded {
			s.expanded = false // by the planning that stopped here
		} else if err := b.df.Expand(cmd, s.vars); err != nil {
			return err
		}
		handled, err := b.dispatchConfig(s, cmd)
		if err != nil {
			return b.df.Wrap(cmd.Location(), fmt.Errorf("%s: %w", strings.ToUpper(cmd.Name()), err))
		}
		if handled {
			continue
		}
		err = b.dispatchFiles(ctx, s, cmd)
		var stop *stopPlan
		if errors.As(err, &stop) {
			skip := 0
			if stop.added {
				skip = 1
			} else {
				// Gathering stopped before its step: the command is
				// dispatched again, as expanded now.
				s.expanded = true
			}
			b.planRest(s, stop.reason, skip)
			return nil
		}
		if err != nil {
			return b.df.Wrap(cmd.Location(), err)
		}
	}
	return nil
}

// planRest lists the stage's layer steps from s.next on (after the first
// skip of them) as AfterMiss: their keys depend on a result this build
// makes. The first says why when reason is set.
func (b *builder) planRest(s *stage, reason string, skip int) {
	n := skip
	for _, cmd := range s.commands[s.next:] {
		switch cmd.(type) {
		case *instructions.CopyCommand, *instructions.AddCommand, *instructions.RunCommand, *instructions.WorkdirCommand:
		default:
			continue
		}
		if n > 0 {
			n--
			continue
		}
		s.plan.Add(plan.Step{Name: fmt.Sprint(cmd), Line: dockerfile.StartLine(cmd.Location()), Status: plan.AfterMiss, Reason: reason})
		reason = ""
	}
}

// start announces a step and returns its progress id and start time.
func (b *builder) start(s *stage, what string) (int, time.Time) {
	id := int(b.ids.Add(1))
	name := what
	if s != nil {
		prefix := ""
		if b.multi {
			prefix = b.platform.String() + " "
		}
		if len(b.stages) > 1 {
			prefix += s.name + " "
		}
		s.step++
		name = fmt.Sprintf("[%s%d/%d] %s", prefix, s.step, s.steps, what)
	}
	b.sink.Emit(progress.Event{ID: id, Name: name, Status: progress.Started})
	return id, time.Now()
}

func (b *builder) done(id int, start time.Time) {
	b.sink.Emit(progress.Event{ID: id, Status: progress.Done, Duration: time.Since(start)})
}

func (b *builder) fail(id int, start time.Time, err error) {
	b.sink.Emit(progress.Event{ID: id, Status: progress.Failed, Duration: time.Since(start), Err: err})
}

// keyOptions are the build options that change every layer's contents,
// and so belong in every cache key. The output's compression does not: a
// key names what a step makes (its diffID, on top of its parent's), not
// how the blob is encoded, and the export re-encodes a cached layer whose
// encoding is not the image's (imageEncoding), as BuildKit converts its
// cache's blobs. Keyed by compression, a build asking zstd missed every
// step a gzip build had cached.
func (b *builder) keyOptions() map[string]string {
	opts := map[string]string{}
	if b.opts.Epoch != nil {
		opts["source-date-epoch"] = fmt.Sprint(b.opts.Epoch.Unix())
	}
	return opts
}
