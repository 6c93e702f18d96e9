package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"time"

	"github.com/kiln-build/kiln/internal/mount"
)

// Mount is one extra mount of a RUN step (RUN --mount: cache, bind, secret,
// tmpfs), applied after the root in order.
type Mount struct {
	Destination string   // absolute path inside the container
	Type        string   // "bind", "tmpfs", "overlay"
	Source      string   // host path for "bind"; ignored for "tmpfs"
	Options     []string // as internal/mount: "rbind", "ro", "size=64m", "lowerdir=..."
}

// Network modes of Spec.Network.
const (
	NetworkDefault = "default" // the host's network namespace, as BuildKit's default on a rootful daemon without CNI
	NetworkHost    = "host"
	NetworkNone    = "none" // a new network namespace with only loopback, up
)

// DefaultHostname is the container hostname when Spec.Hostname is empty:
// BuildKit's, so scripts that look at it see what docker build shows.
const DefaultHostname = "buildkitsandbox"

// DefaultPathEnv is added to the environment when Spec.Env has no PATH
// (BuildKit and containerd's default spec do the same).
const DefaultPathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Spec is one process to run.
type Spec struct {
	Root     []mount.Mount // mounted in order at the container's root
	Mounts   []Mount       // applied after Root, in order
	Args     []string
	Env      []string
	Cwd      string // default "/"; created (0755, owned by the process user) if missing
	User     string // "", "name", "uid", "name:group", "uid:gid"; default root
	Network  string // "" or "default" or "host": the host's namespace; "none": only loopback
	Hostname string // default DefaultHostname
	// Insecure is RUN --security=insecure (BuildKit's security.insecure
	// entitlement): every capability, no masked or read-only kernel
	// paths, a writable /sys, and every device allowed.
	Insecure bool
	Stdout   io.Writer
	Stderr   io.Writer
}

// Executor runs RUN processes.
type Executor interface {
	// Name is "chroot" or "runc".
	Name() string
	// Run runs the process to completion. A non-zero exit is *ExitError. On
	// ctx cancel the process is killed (SIGKILL after a short grace),
	// everything is cleaned up and the error wraps ctx.Err(). Cleanup runs on
	// a context that cannot be cancelled but has a timeout, and leaves no
	// mount behind.
	Run(ctx context.Context, spec Spec) error
}

// ExitError is a process that ran and exited non-zero. A process killed by
// a signal has Code 128+signal, as a shell reports it.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("process exited with code %d", e.Code) }

// Errors callers may need to tell apart.
var (
	// ErrUnknownExecutor is returned by New for a name it does not know.
	ErrUnknownExecutor = errors.New("unknown executor")
	// ErrRuncNotFound is returned by New("runc") when runc is not on PATH.
	ErrRuncNotFound = errors.New("runc not found on PATH")
	// ErrInvalidSpec is wrapped by Run for a Spec it refuses before doing
	// anything (no Args, relative destinations, unknown network or mount type).
	ErrInvalidSpec = errors.New("invalid run spec")
)

// killGrace is how long a cancelled process gets between SIGTERM and
// SIGKILL. Short: a build step being cancelled has nothing worth saving.
var killGrace = time.Second

// cleanupTimeout bounds cleanup work (runc delete, unmounts) done on a
// context detached from the caller's cancellation.
const cleanupTimeout = 30 * time.Second

// Config says where an executor keeps its state.
type Config struct {
	// Dir holds each run's work directory (the root's mount point, hosts
	// file, runc bundle with its config.json). "" is the system temp dir.
	// kiln puts it on a private tmpfs: config.json holds the process's
	// environment, secrets included.
	Dir string
	// RuncRoot is runc's state root ("" keeps one per run, in its work
	// directory). kiln gives each build its own, so that after a crash the
	// next kiln finds exactly that build's containers (RemoveContainers).
	RuncRoot string
}

// New returns the executor called name: "chroot", "runc", or "auto" (or
// ""), which is runc when it is on PATH and chroot otherwise.
func New(name string, cfg Config) (Executor, error) {
	switch name {
	case "", "auto":
		if p, err := exec.LookPath("runc"); err == nil {
			return &runcExecutor{runc: p, cfg: cfg}, nil
		}
		return chrootExecutor{cfg: cfg}, nil
	case "chroot":
		return chrootExecutor{cfg: cfg}, nil
	case "runc":
		p, err := exec.LookPath("runc")
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRuncNotFound, err)
		}
		return &runcExecutor{runc: p, cfg: cfg}, nil
	}
	return nil, fmt.Errorf("%w %q (want auto, chroot or runc)", ErrUnknownExecutor, name)
}
