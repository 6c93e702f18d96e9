package solver

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/cachekey"
	"github.com/kiln-build/kiln/internal/dockerfile"
	"github.com/kiln-build/kiln/internal/mount"
	"github.com/kiln-build/kiln/internal/plan"
	"github.com/kiln-build/kiln/internal/snapshot"
)

// stage is the state of one stage while it builds: the image so far (a
// base image plus the layers added on top), the variables instructions
// expand against, and, only once an instruction needs files, a root
// filesystem on disk kept in step with the layers.
type stage struct {
	index int
	def   instructions.Stage
	name  string // display name: the stage's name or "stage-N"
	// platform is what the stage builds for: the target's, its FROM
	// --platform's, or that of the stage it is built on.
	platform dockerfile.Platform

	// base is the registry image at the root of this stage's ancestry
	// (nil for scratch); added are the layers built on top of it, by this
	// stage and by the stages it derives from.
	base  v1.Image
	added []v1.Layer
	cfg   *v1.ConfigFile

	// baseKey is the cache key of the stage's base (cachekey.Base) and
	// diffIDs[i] is added[i]'s diffID: together they are the chain every
	// step's key covers (see chain). keys[i] is the step key of added[i].
	// baseHist counts the base image's history entries, before this
	// build's own.
	baseKey  digest.Digest
	diffIDs  []digest.Digest
	keys     []digest.Digest
	baseHist int
	seen     map[string]int // step names seen so far, for step ids
	baseRef  string         // the base's manifest digest, or "scratch"

	// vars is the scope words expand in: the image's Env, then ARGs and
	// ENVs in the order they appear. args are the ARGs declared so far;
	// inheritedArgs those of the stages this one is built FROM.
	vars          *dockerfile.Vars
	args          []string
	inheritedArgs []string

	// commands are the stage's instructions, ONBUILD triggers of the base
	// image first.
	commands []instructions.Command

	steps, step int // for progress names: "[name step/steps]"

	// The build plans every stage before it runs any (see buildStage):
	// next is the command a stage resumes at, stopped that command's step
	// when planning gathered it and saw it miss, expanded whether that
	// command was expanded already, inherited whether the FROM <stage>
	// parent's state was taken; plan is what planning predicted; line is
	// the Dockerfile line of the command being dispatched.
	next      int
	stopped   *stoppedStep
	expanded  bool
	inherited bool
	plan      plan.Stage
	line      int

	cmdSet        bool          // CMD was set in this stage (ENTRYPOINT keeps it)
	startInterval time.Duration // HEALTHCHECK --start-interval, which ggcr's config lacks

	mu       sync.Mutex
	rootfs   string          // mounted view of the root filesystem, "" until needed
	rootSnap snapshot.Active // the snapshot behind rootfs
	// rootMounted is false when rootfs is the snapshot's own directory
	// (the copy snapshotter's), used without a mount.
	rootMounted bool
}

// layers returns every layer of the stage's image, bottom first.
func (s *stage) layers() ([]v1.Layer, error) {
	var out []v1.Layer
	if s.base != nil {
		ls, err := s.base.Layers()
		if err != nil {
			return nil, fmt.Errorf("read base image layers: %w", err)
		}
		out = append(out, ls...)
	}
	return append(out, s.added...), nil
}

// root returns a view of the stage's root filesystem for steps that read
// from it (COPY --from, RUN --mount from=): a snapshot of its layers,
// mounted once and kept until the stage changes or the build ends. It goes
// through the snapshotter, so each layer is fetched and extracted at most
// once however many stages read it.
func (s *stage) root(ctx context.Context, prepare func(context.Context, *stage) (snapshot.Active, error), tmp string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rootfs != "" {
		return s.rootfs, nil
	}
	active, err := prepare(ctx, s)
	if err != nil {
		return "", fmt.Errorf("root filesystem of %s: %w", s.name, err)
	}
	if dir, ok := plainDir(active.Mounts()); ok {
		s.rootfs, s.rootSnap, s.rootMounted = dir, active, false
		return dir, nil
	}
	dir, err := os.MkdirTemp(tmp, "rootfs-")
	if err != nil {
		active.Release()
		return "", fmt.Errorf("create root filesystem: %w", err)
	}
	if err := mount.All(active.Mounts(), dir); err != nil {
		active.Release()
		os.Remove(dir)
		return "", fmt.Errorf("root filesystem of %s: %w", s.name, err)
	}
	s.rootfs, s.rootSnap, s.rootMounted = dir, active, true
	return dir, nil
}

// chain identifies the stage's root filesystem so far by its contents:
// the base and the diffID of every layer added (cachekey.Chain). It is the
// "parent" of the next step's key and what a --from of this stage is keyed
// by.
func (s *stage) chain() digest.Digest {
	return cachekey.Chain(s.baseKey, s.diffIDs)
}

// complete reports whether every command of the stage is done: planned
// as hits, or built.
func (s *stage) complete() bool { return s.inherited && s.next >= len(s.commands) }

// inherit makes s start from parent's finished state (`FROM parent`).
func (s *stage) inherit(parent *stage) {
	s.base = parent.base
	s.added = append([]v1.Layer(nil), parent.added...)
	s.keys = append([]digest.Digest(nil), parent.keys...)
	s.diffIDs = append([]digest.Digest(nil), parent.diffIDs...)
	s.baseKey = parent.baseKey
	s.baseHist = parent.baseHist
	s.baseRef = parent.baseRef
	s.cfg = parent.cfg.DeepCopy()
	// The parent's ONBUILD triggers fire in this stage (see resolveBase)
	// and are not carried over, as in BuildKit.
	s.cfg.Config.OnBuild = nil
	s.vars = parent.vars.Clone()
	// ARGs come along with their values (as in BuildKit); they stay
	// env: inputs (shipped keys never change) but are explained as ARGs.
	s.inheritedArgs = slices.Concat(parent.inheritedArgs, parent.args)
}

// dropRoot unmounts and releases the stage's root filesystem view, after a
// step changed the stage (it no longer matches the layers) or at the end.
func (s *stage) dropRoot() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rootfs == "" {
		return
	}
	if s.rootMounted {
		_ = mount.UnmountAll(s.rootfs)
		os.Remove(s.rootfs)
	}
	_ = s.rootSnap.Release()
	s.rootfs, s.rootSnap = "", nil
}
