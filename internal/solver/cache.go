package solver

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/cachekey"
	"github.com/kiln-build/kiln/internal/plan"
	"github.com/kiln-build/kiln/internal/progress"
)

// step is one layer-producing instruction as the cache sees it.
type step struct {
	op      string // "copy", "add", "workdir", "run"
	name    string // progress name: the instruction as written
	history string // created_by
	inputs  cachekey.Inputs
	// files are the context files a COPY/ADD reads, kept to name the
	// changed ones on a miss (the record may hold only their digests).
	files []cachekey.File
	// occurrence tells apart steps of one stage written alike (two
	// "RUN <<EOF"); set by step().
	occurrence int
	// run is the RUN instruction of a "run" step, whose cache mounts a
	// miss prefetches.
	run *instructions.RunCommand
	// keyAfter marks a step whose inputs cannot be known before it runs
	// (ADD of a URL without --checksum): it always runs, and its key is
	// computed from what it produced, so later steps can still hit.
	keyAfter bool
}

// StepReport is one step of the build summary.
type StepReport struct {
	ID         int           `json:"id"`
	Stage      string        `json:"stage"`
	Name       string        `json:"name"`
	Cached     bool          `json:"cached"`
	CacheFrom  string        `json:"cacheFrom,omitempty"`
	Key        string        `json:"key"`
	Duration   time.Duration `json:"durationNs"`
	Downloaded int64         `json:"bytesDownloaded"`
	Uploaded   int64         `json:"bytesUploaded"`
	// Reason says why a step missed when an earlier build of the same step
	// is known: the input that changed.
	Reason string `json:"missReason,omitempty"`
	// Error is why the step failed; a failed build's report ends with it.
	Error string `json:"error,omitempty"`
}

// stepStat is a StepReport while the build runs: uploads happen later, at
// export, through the layer, so they are counted atomically.
type stepStat struct {
	StepReport
	uploaded atomic.Int64
}

// lookups reports whether steps of s may be served from the cache.
func (b *builder) lookups(s *stage) bool {
	return !b.opts.NoCache && !slices.Contains(b.opts.NoCacheFilter, s.def.Name)
}

// stopPlan ends a stage's planning at the step that needs a result this
// build has yet to make: a miss (gathered and kept as the stage's
// stopped step), or a --from of a stage that misses (the command is
// dispatched again when the stage resumes).
type stopPlan struct {
	reason string // for the AfterMiss steps that follow
	added  bool   // the stopping step is in the plan already (a miss)
}

func (e *stopPlan) Error() string { return "plan stops here: " + e.reason }

// execFunc makes a missed step's layer.
type execFunc func(ctx context.Context, id int) (v1.Layer, error)

// stoppedStep is the miss a stage's planning stopped at, as gathered then:
// its inputs, key and the work that makes its layer depend on nothing the
// rest of the build changes (the stage waits at it), so the stage resumes
// by running it, without reading its inputs (the context files a COPY
// hashes, the stages it names) a second time.
type stoppedStep struct {
	st     step
	key    digest.Digest
	reason string // why it missed, as the plan says
	exec   execFunc
}

// step runs one layer-producing instruction through the cache: a hit adds
// the cached layer without downloading it; a miss runs exec, records the
// result in kiln's local cache, and says why it missed when it can.
//
// While the build plans, a hit is taken as it is then (the lookup is the
// whole cost of a hit, so planning it is doing it), and a miss is only
// planned: step keeps it as the stage's stopped step and returns a
// *stopPlan without running it; the stage resumes with it (runStopped)
// when the build runs.
func (b *builder) step(ctx context.Context, s *stage, st step, exec execFunc) error {
	if s.seen == nil {
		s.seen = map[string]int{}
	}
	s.seen[st.name]++
	st.occurrence = s.seen[st.name]
	// The parent is the chain of results the step runs on, so a record is
	// only ever used on top of the bytes it was built on.
	st.inputs["parent"] = s.chain().String()
	if len(s.keys) == 0 {
		// The first layer on a base says which: a moved tag is then
		// reported as "base image digest changed".
		st.inputs["base"] = s.baseRef
	}
	key := cachekey.Key(st.op, st.inputs)
	if b.planning {
		ps := plan.Step{ID: b.stepID(s, st), Name: st.name, Line: s.line, Key: key.String()}
		if !st.keyAfter && b.lookups(s) {
			if rec, layer, from, ok := b.caches.lookup(ctx, key); ok {
				ps.Status, ps.Store = plan.Hit, from
				s.plan.Add(ps)
				id, start := b.start(s, st.name)
				b.hit(s, st, id, start, key, rec, layer, from)
				return nil
			}
		}
		// What a miss reads beyond its lookup (cache mounts, zstd copies
		// of base layers) sees every store.
		if err := b.caches.ready(ctx); err != nil {
			return err
		}
		ps.Status = plan.Miss
		if st.keyAfter {
			ps.Key, ps.Reason = "", "its input is known only once it runs (ADD of a URL without --checksum)"
		} else {
			ps.Reason = b.explain(ctx, s, st, key)
		}
		s.plan.Add(ps)
		if !b.opts.DryRun {
			// What the miss runs on starts downloading now, while the
			// other stages are planned and their contexts hashed.
			b.prefetch(b.planCtx, s, st)
		}
		s.stopped = &stoppedStep{st: st, key: key, reason: ps.Reason, exec: exec}
		return &stopPlan{added: true}
	}
	id, start := b.start(s, st.name)
	if !st.keyAfter && b.lookups(s) {
		if rec, layer, from, ok := b.caches.lookup(ctx, key); ok {
			b.hit(s, st, id, start, key, rec, layer, from)
			return nil
		}
	}
	if err := b.caches.ready(ctx); err != nil {
		return err
	}
	// A miss: what it runs on downloads while it is explained and set up.
	b.prefetch(ctx, s, st)
	reason := ""
	if !st.keyAfter {
		reason = b.explain(ctx, s, st, key)
	}
	return b.build(ctx, s, st, id, start, key, reason, exec)
}

// runStopped runs the step s's planning stopped at: the plan looked it up
// and missed, and started its prefetch.
func (b *builder) runStopped(ctx context.Context, s *stage) error {
	p := s.stopped
	s.stopped = nil
	id, start := b.start(s, p.st.name)
	reason := p.reason
	if p.st.keyAfter {
		reason = ""
	}
	return b.build(ctx, s, p.st, id, start, p.key, reason, p.exec)
}

// build makes a missed step's layer with exec, records it in kiln's
// local cache and adds it to the stage.
func (b *builder) build(ctx context.Context, s *stage, st step, id int, start time.Time, key digest.Digest, reason string, exec execFunc) error {
	rep := &stepStat{StepReport: StepReport{ID: id, Stage: s.name, Name: st.name, Reason: reason}}
	down := b.downloaded.Load()
	l, err := exec(ctx, id)
	rep.Downloaded = b.downloaded.Load() - down
	rep.Duration = time.Since(start)
	if err != nil {
		b.fail(id, start, err)
		b.caches.failed(rep, err)
		return err
	}
	diffID, err := l.DiffID()
	if err != nil {
		b.fail(id, start, err)
		b.caches.failed(rep, err)
		return fmt.Errorf("%s: layer diffID: %w", st.name, err)
	}
	if st.keyAfter {
		st.inputs["result"] = diffID.String()
		key = cachekey.Key(st.op, st.inputs)
	}
	rep.Key = key.String()
	rec, err := record(key, b.stepID(s, st), st.inputs, l, b.created)
	if err != nil {
		b.fail(id, start, err)
		b.caches.failed(rep, err)
		return err
	}
	if err := b.caches.local.Put(ctx, rec, l); err != nil {
		// The build itself is fine; only the next one will miss.
		b.warn(fmt.Sprintf("could not write kiln's local cache: %v", err))
	}
	counted := b.counting(l, &rep.uploaded)
	b.caches.remember(usedRecord{rec: rec, layer: counted}, rep)
	b.addLayer(s, counted, key, digest.Digest(diffID.String()), st.history, b.created)
	b.done(id, start)
	return nil
}

// hit adds a cached step's layer (lazy: nothing is fetched) and reports it.
func (b *builder) hit(s *stage, st step, id int, start time.Time, key digest.Digest, rec cache.Record, layer v1.Layer, from string) {
	rep := &stepStat{StepReport: StepReport{ID: id, Stage: s.name, Name: st.name}}
	counted := b.counting(layer, &rep.uploaded)
	// The record names its result, so the chain grows without fetching
	// the layer.
	b.addLayer(s, counted, key, digest.Digest(rec.Layer.DiffID.String()), st.history, rec.Created)
	rep.Cached, rep.CacheFrom, rep.Key = true, from, key.String()
	rep.Duration = time.Since(start)
	b.caches.remember(usedRecord{rec: rec, layer: counted}, rep)
	b.sink.Emit(progress.Event{ID: id, Status: progress.Cached, Duration: rep.Duration})
}

// explain says why a step of s missed: the cache was off for it, or the
// input that changed since an earlier build of the same step.
func (b *builder) explain(ctx context.Context, s *stage, st step, key digest.Digest) string {
	if !b.lookups(s) {
		return "cache disabled (--no-cache)"
	}
	return b.caches.explain(ctx, b.stepID(s, st), key, st.inputs, st.files)
}

// stepID names "the same step" across builds: its stage and instruction as
// written (and which occurrence of that text it is), so a changed input can
// be found by comparing with the last run.
func (b *builder) stepID(s *stage, st step) string {
	return fmt.Sprintf("%s|%s|%d|%s", b.df.Name, s.name, st.occurrence, st.name)
}

// addLayer appends a step's layer (with its key and diffID) and its
// history entry.
func (b *builder) addLayer(s *stage, l v1.Layer, key, diffID digest.Digest, history string, created time.Time) {
	s.added = append(s.added, l)
	s.keys = append(s.keys, key)
	s.diffIDs = append(s.diffIDs, diffID)
	s.dropRoot()
	b.commitAt(s, history, true, created)
}

// warn reports a problem that does not fail the build.
func (b *builder) warn(msg string) {
	b.sink.Emit(progress.Event{Status: progress.Warning, Log: msg})
}

// counting wraps l so reads of its compressed bytes are counted. A
// mountable layer stays mountable: the registry client recognises it by
// type, and a mount must never turn into a download and an upload.
func (b *builder) counting(l v1.Layer, n *atomic.Int64) v1.Layer {
	if ml, ok := l.(*remote.MountableLayer); ok {
		return &remote.MountableLayer{Layer: &countingLayer{Layer: ml.Layer, n: n, on: &b.uploading}, Reference: ml.Reference}
	}
	return &countingLayer{Layer: l, n: n, on: &b.uploading}
}

// countingLayer counts the compressed bytes read from a layer while on is
// set (during pushes to registries), which is what uploading it costs;
// mounted and already-present blobs are never read.
type countingLayer struct {
	v1.Layer
	n  *atomic.Int64
	on *uploadGauge
}

func (c *countingLayer) Compressed() (io.ReadCloser, error) {
	rc, err := c.Layer.Compressed()
	if err != nil || !c.on.Load() {
		return rc, err
	}
	return &countingReader{ReadCloser: rc, n: c.n}, nil
}

type countingReader struct {
	io.ReadCloser
	n *atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.n.Add(int64(n))
	return n, err
}
