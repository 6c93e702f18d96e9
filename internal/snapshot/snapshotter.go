package snapshot

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/mount"
)

// Snapshotter prepares writable root filesystems over image layers.
type Snapshotter interface {
	// Name is "overlay" or "copy".
	Name() string
	// Prepare returns an active snapshot whose view is layers applied in
	// order plus an empty writable layer on top. Layers are read only
	// here, and each is extracted at most once per snapshotter root.
	Prepare(ctx context.Context, layers []v1.Layer) (Active, error)
}

// Prefetcher is a Snapshotter that can fetch layers ahead of the Prepare
// that needs them, so their download and extraction overlap other work.
// The overlay snapshotter is one; the copy snapshotter is not (its
// snapshot is a full copy made by Prepare, there is nothing to share
// ahead of it), and a caller simply skips prefetching there.
type Prefetcher interface {
	// Prefetch gets layers ready for a later Prepare of them (or of a
	// chain they start), which then fetches nothing, and makes no active
	// snapshot. Cancelled, it leaves no partial layer behind: what it
	// extracted completely stays, what it was extracting is removed
	// before it returns.
	Prefetch(ctx context.Context, layers []v1.Layer) error
}

// Active is one writable snapshot between Prepare and Release.
type Active interface {
	// Mounts, mounted in order at one target, show the root filesystem
	// read-write.
	Mounts() []mount.Mount
	// Diff reports what changed since Prepare, relative to the root, and
	// the directory to read the changed paths from. Call it after
	// unmounting.
	Diff(ctx context.Context) (Changes, string, error)
	// Commit says this snapshot's content is now layers+[l], where l was
	// written from Diff, so a later Prepare(layers+[l]) may reuse it.
	// After Commit only Release may be called.
	Commit(ctx context.Context, l v1.Layer) error
	// Release removes the snapshot's writable state. It is safe to call
	// twice and after Commit.
	Release() error
}

// Changes says what a step changed, relative to the root (slash-separated,
// no leading slash). It has image.Changes' fields and meaning, so
// image.Changes(ch) converts it; snapshot does not import image so that
// image's tests may use snapshot.
type Changes struct {
	// Paths were created or modified; a directory listed here stands for
	// itself only, its children are listed when they changed.
	Paths []string
	// Deleted paths existed below and are gone (a path under a deleted or
	// replaced directory is not listed).
	Deleted []string
	// Opaque directories hide everything lower layers had in them.
	Opaque []string
}

// Snapshotter names accepted by New.
const (
	NameOverlay = "overlay"
	NameCopy    = "copy"
	NameAuto    = "auto"
)

var (
	// ErrUnknownSnapshotter is returned by New for a name it does not know.
	ErrUnknownSnapshotter = errors.New("unknown snapshotter")
	// ErrOverlayUnsupported is returned by New("overlay", root) where an
	// overlay mount does not work under root.
	ErrOverlayUnsupported = errors.New("overlayfs not supported")
	// ErrTooManyLayers is returned by the overlay Prepare when the
	// lowerdir list would not fit in the kernel's mount data page.
	ErrTooManyLayers = errors.New("too many layers for one overlay mount")
	// ErrCommitted is returned by Diff or Commit after Commit or Release.
	ErrCommitted = errors.New("snapshot already committed or released")
)

// Option configures New.
type Option func(*options)

type options struct {
	pin    func(ctx context.Context, ids ...string) error
	active string
}

// WithPin has Prepare call pin with each layer's LayerPin before looking
// the extracted layer up, so a concurrent eviction (package gc) keeps it
// while the caller's lease lives.
func WithPin(pin func(ctx context.Context, ids ...string) error) Option {
	return func(o *options) { o.pin = pin }
}

// WithActiveDir puts active snapshots (the writable state of steps being
// run) under dir instead of root/a. kiln gives each build its own, so the
// snapshots of a build that was killed are found, and removed, with the
// rest of its state. dir must be on root's filesystem: Commit renames into
// root.
func WithActiveDir(dir string) Option { return func(o *options) { o.active = dir } }

// New returns the snapshotter called name, keeping its state under root
// (created if missing). "" or "auto" picks overlay when OverlaySupported
// (root), else copy; Name() tells which was chosen.
func New(name, root string, opts ...Option) (Snapshotter, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if root == "" {
		return nil, errors.New("snapshotter: empty root")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("snapshotter root: %w", err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("snapshotter root: %w", err)
	}
	if o.active == "" {
		o.active = filepath.Join(abs, "a")
	}
	if o.active, err = filepath.Abs(o.active); err != nil {
		return nil, fmt.Errorf("snapshotter active dir: %w", err)
	}
	// The probe mounts under the active dir, so a kill during it leaves
	// its mount where the owner of that dir cleans up.
	switch name {
	case "", NameAuto:
		if OverlaySupported(o.active) {
			return newOverlay(abs, o.active, o.pin)
		}
		return newCopy(abs, o.active)
	case NameOverlay:
		if !OverlaySupported(o.active) {
			return nil, fmt.Errorf("snapshotter root %s: %w: %s", abs, ErrOverlayUnsupported, probeError(o.active))
		}
		return newOverlay(abs, o.active, o.pin)
	case NameCopy:
		return newCopy(abs, o.active)
	}
	return nil, fmt.Errorf("%q (want overlay, copy or auto): %w", name, ErrUnknownSnapshotter)
}

// diffIDs returns the layers' diffIDs, bottom first.
func diffIDs(layers []v1.Layer) ([]v1.Hash, error) {
	out := make([]v1.Hash, len(layers))
	for i, l := range layers {
		h, err := l.DiffID()
		if err != nil {
			return nil, fmt.Errorf("layer %d diffID: %w", i, err)
		}
		out[i] = h
	}
	return out, nil
}

// chainKey names a layer chain (like OCI's ChainID, but one hash over the
// whole list is enough for a directory name).
func chainKey(ids []v1.Hash) string {
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id.String() + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// activeDir makes a fresh, short-named directory for one active snapshot
// under parent.
func activeDir(parent string) (string, error) {
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return "", fmt.Errorf("create active snapshot: %w", err)
	}
	dir, err := os.MkdirTemp(parent, "")
	if err != nil {
		return "", fmt.Errorf("create active snapshot: %w", err)
	}
	return dir, nil
}

// releaser makes Release idempotent and orders it after Commit.
type releaser struct {
	mu        sync.Mutex
	committed bool
	released  bool
}

// usable reports ErrCommitted once the snapshot was committed or released.
func (r *releaser) usable() error {
	if r.committed || r.released {
		return ErrCommitted
	}
	return nil
}

// validRoot refuses roots whose paths would break overlay's option syntax.
func validRoot(root string) error {
	if strings.ContainsAny(root, ",:=\\") {
		return fmt.Errorf("snapshotter root %q holds one of , : = \\ which overlay options cannot carry: %w", root, ErrOverlayUnsupported)
	}
	return nil
}
