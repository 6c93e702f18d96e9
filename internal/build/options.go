package build

import (
	"time"

	"github.com/kiln-build/kiln/internal/dockerfile"
	"github.com/kiln-build/kiln/internal/output"
	"github.com/kiln-build/kiln/internal/progress"
	"github.com/kiln-build/kiln/internal/registry"
)

// Options describe one build, as `kiln build` flags do.
type Options struct {
	// ContextDir is the build context directory.
	ContextDir string
	// Dockerfile is the Dockerfile's text; DockerfileName is how errors
	// name it; DockerfilePath is its path on disk ("" when it came from
	// standard input), used to find a Dockerfile-specific .dockerignore.
	Dockerfile     []byte
	DockerfileName string
	DockerfilePath string

	Target      string
	BuildArgs   map[string]string
	Labels      map[string]string
	Platform    dockerfile.Platform
	NoCache     bool
	Parallelism int

	Tags    []string
	Outputs []output.Spec // none: kiln's local image store

	Registry   registry.Options
	StoreDir   string // kiln's local image store
	DockerHost string

	// Epoch is SOURCE_DATE_EPOCH: file times are clamped to it and every
	// created time is set to it, so equal inputs give equal digests.
	Epoch *time.Time

	// TempDir is where root filesystems and layer blobs are written while
	// the build runs ("" = the system temp dir).
	TempDir string

	Progress progress.Sink
}
