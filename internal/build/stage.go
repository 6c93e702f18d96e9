package build

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/dockerfile"
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

	// base is the registry image at the root of this stage's ancestry
	// (nil for scratch); added are the layers built on top of it, by this
	// stage and by the stages it derives from.
	base  v1.Image
	added []v1.Layer
	cfg   *v1.ConfigFile

	// key is the cache key of the stage's state so far (its base, then
	// each layer step); keys[i] is the key of added[i]. baseHist counts
	// the base image's history entries, before this build's own.
	key      digest.Digest
	keys     []digest.Digest
	baseHist int
	seen     map[string]int // step names seen so far, for step ids
	baseRef  string         // the base's manifest digest, or "scratch"

	// vars is the scope words expand in: the image's Env, then ARGs and
	// ENVs in the order they appear. args are the ARGs declared so far.
	vars *dockerfile.Vars
	args []string

	// commands are the stage's instructions, ONBUILD triggers of the base
	// image first.
	commands []instructions.Command

	steps, step int // for progress names: "[name step/steps]"

	cmdSet        bool          // CMD was set in this stage (ENTRYPOINT keeps it)
	startInterval time.Duration // HEALTHCHECK --start-interval, which ggcr's config lacks

	mu     sync.Mutex
	rootfs string // materialized root filesystem, "" until needed
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

// root returns the stage's root filesystem, extracting its layers into a
// fresh directory the first time. Later instructions change the directory
// in place, so it always matches the layers.
func (s *stage) root(ctx context.Context, tmp string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rootfs != "" {
		return s.rootfs, nil
	}
	dir, err := os.MkdirTemp(tmp, "rootfs-")
	if err != nil {
		return "", fmt.Errorf("create root filesystem: %w", err)
	}
	ls, err := s.layers()
	if err != nil {
		return "", err
	}
	if err := snapshot.Materialize(ctx, dir, ls); err != nil {
		return "", fmt.Errorf("extract layers of stage %s: %w", s.name, err)
	}
	s.rootfs = dir
	return dir, nil
}

// inherit makes s start from parent's finished state (`FROM parent`).
func (s *stage) inherit(parent *stage) {
	s.base = parent.base
	s.added = append([]v1.Layer(nil), parent.added...)
	s.keys = append([]digest.Digest(nil), parent.keys...)
	s.key = parent.key
	s.baseHist = parent.baseHist
	s.baseRef = parent.baseRef
	s.cfg = parent.cfg.DeepCopy()
	// The parent's ONBUILD triggers fire in this stage (see resolveBase)
	// and are not carried over, as in BuildKit.
	s.cfg.Config.OnBuild = nil
	s.vars = parent.vars.Clone()
}

// dropRoot forgets the materialized root filesystem after a step changed
// the stage through a snapshot: it no longer matches the layers.
func (s *stage) dropRoot() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rootfs != "" {
		os.RemoveAll(s.rootfs)
		s.rootfs = ""
	}
}
