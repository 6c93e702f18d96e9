package solver

import (
	"golang.org/x/crypto/ssh/agent"
	"os"
	"path/filepath"
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

	Target string
	// DryRun stops after the plan: nothing runs, nothing is written or
	// exported; Result.Plan says what a build would do.
	DryRun bool
	// NoCache skips every cache lookup (results are still recorded);
	// NoCacheFilter skips them for the named stages only.
	NoCache       bool
	NoCacheFilter []string
	// CacheFrom are extra caches read after kiln's local one, in order;
	// CacheTo are the caches this build's results are exported to.
	CacheFrom []CacheSpec
	CacheTo   []CacheSpec

	BuildArgs map[string]string
	Labels    map[string]string
	// Platform is the target platform (the host's when unset); with
	// more than one Platforms, each is built and the outputs get one
	// image index holding an image per platform.
	Platform  dockerfile.Platform
	Platforms []dockerfile.Platform
	// Parallelism caps how many stages are built at once; 0 (unset)
	// builds every stage whose dependencies are built, as BuildKit does.
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
	// AllowInsecure is --allow security.insecure: RUN --security=insecure
	// runs privileged; without it such a RUN fails, as in BuildKit.
	AllowInsecure bool
	// Secrets are the --secret values by id.
	Secrets map[string]Secret
	// SSH are the --ssh agents by id, for RUN --mount=type=ssh.
	SSH map[string]SSH

	Progress progress.Sink
}

// CacheSpec is one --cache-from or --cache-to, in buildx's terms:
// type=registry,ref=REF or type=local,src=DIR / dest=DIR.
type CacheSpec struct {
	Type string // "registry" or "local"
	Ref  string // registry
	Dir  string // local: src for --cache-from, dest for --cache-to
	// Mode "max" (default) exports every step of every stage; "min" only
	// the final image's.
	Mode        string
	IgnoreError bool
	MaxAge      time.Duration
	MaxEntries  int
	// Compression is BuildKit's cache-to compression=, for the blobs only
	// the cache holds (layers of stages outside the image's FROM chain;
	// cache mounts are always zstd, internal/mountstore): "" is zstd, unlike BuildKit's gzip, since
	// only kiln ever reads them. CompressionLevel is compression-level
	// (nil: the library default). ForceCompression re-encodes every blob
	// exported to this cache, image layers and earlier builds' included.
	Compression      string
	CompressionLevel *int
	ForceCompression bool
	// MountMaxSize is cache-mount-max-size= on --cache-to: the bytes of
	// files each cache mount keeps, least recently used dropped first (0:
	// DefaultMountMaxSize).
	MountMaxSize int64
}

func (c CacheSpec) String() string {
	if c.Type == "registry" {
		return "type=registry,ref=" + c.Ref
	}
	return "type=local," + c.Dir
}

// ownPaths are the paths this build and other kiln processes write while
// it reads the context: they must never be read as part of it, or COPY
// copies kiln's snapshots into the snapshot being written, without end.
// tmp is this build's temporary directory.
func (o Options) ownPaths(tmp string) []string {
	temp := o.TempDir
	if temp == "" {
		temp = os.TempDir()
	}
	paths := []string{o.CacheDir, o.StoreDir, tmp,
		// Every kiln's temporary directories and files, not only this
		// build's: a concurrent build writes there too.
		filepath.Join(temp, "kiln-build-*"), filepath.Join(temp, "kiln-run-*"), filepath.Join(temp, "kiln-add-*")}
	for _, spec := range o.Outputs {
		if spec.Dest == "" {
			continue
		}
		// Outputs are written through a temporary sibling, then renamed.
		paths = append(paths, spec.Dest, filepath.Join(filepath.Dir(spec.Dest), "."+filepath.Base(spec.Dest)+".tmp-*"))
	}
	for _, c := range o.CacheTo {
		if c.Type == "local" {
			paths = append(paths, c.Dir)
		}
	}
	return paths
}

// SSH is one --ssh source: the socket of an SSH agent on this machine, or
// an agent kiln serves itself (keys read from files, held in memory).
type SSH struct {
	Socket string
	Agent  agent.Agent
}
