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

	// CacheDir is kiln's own directory (extracted layers, cache mounts);
	// "" keeps them in TempDir for this build only.
	CacheDir string

	// Isolation picks the RUN executor: "auto" (runc when installed, else
	// chroot), "chroot" or "runc". Snapshotter picks how root filesystems
	// are made: "auto" (overlay where the kernel allows), "overlay", "copy".
	Isolation   string
	Snapshotter string
	// Network is RUN's default network: "default" (the host's), "host",
	// "none".
	Network string
	// Secrets are the --secret values by id.
	Secrets map[string]Secret

	Progress progress.Sink
}
