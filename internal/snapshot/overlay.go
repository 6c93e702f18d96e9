package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
	"github.com/kiln-build/kiln/internal/mount"
)

// overlaySnapshotter stacks extracted layers with overlayfs: Prepare costs
// the extraction of layers not seen before, and Diff reads only the upper
// directory, never the whole tree (the anti-pattern of rescanning).
type overlaySnapshotter struct {
	root   string
	active string // parent of active snapshots
	layers *layerStore
	extra  []string
	pin    func(ctx context.Context, ids ...string) error
}

func newOverlay(root, active string, pin func(ctx context.Context, ids ...string) error) (*overlaySnapshotter, error) {
	if err := validRoot(root); err != nil {
		return nil, err
	}
	if err := validRoot(active); err != nil {
		return nil, err
	}
	return &overlaySnapshotter{
		root:   root,
		active: active,
		layers: storeFor(filepath.Join(root, "l")),
		extra:  overlayExtraOptions(active),
		pin:    pin,
	}, nil
}

func (o *overlaySnapshotter) Name() string { return NameOverlay }

// fetchLimit bounds concurrent layer downloads and extractions per Prepare
// (or Prefetch).
const fetchLimit = 3

// Prefetch gets every layer into the layer store, as Prepare would, with no
// active snapshot: a later Prepare of these layers fetches nothing. The
// layers are pinned in the caller's lease first, as Prepare pins them, so
// an eviction between Prefetch and Prepare keeps them.
func (o *overlaySnapshotter) Prefetch(ctx context.Context, layers []v1.Layer) error {
	if _, err := o.extracted(ctx, layers); err != nil {
		return fmt.Errorf("prefetch layers: %w", err)
	}
	return nil
}

// extracted pins layers and returns their directories in the layer store,
// bottom first, fetching and extracting those not there yet, fetchLimit at
// once. Concurrent callers share one extraction per layer (layerStore.get).
func (o *overlaySnapshotter) extracted(ctx context.Context, layers []v1.Layer) ([]string, error) {
	if o.pin != nil {
		// Pinned before they are looked up: an eviction that runs
		// meanwhile keeps them, one that ran before made them missing.
		pins := make([]string, 0, len(layers))
		for i, l := range layers {
			h, err := l.DiffID()
			if err != nil {
				return nil, fmt.Errorf("layer %d diffID: %w", i, err)
			}
			pins = append(pins, LayerPin(h))
		}
		if err := o.pin(ctx, pins...); err != nil {
			return nil, err
		}
	}
	lowers := make([]string, len(layers))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fetchLimit)
	for i, l := range layers {
		g.Go(func() error {
			d, err := o.layers.get(gctx, l, o.active)
			if err != nil {
				return fmt.Errorf("layer %d: %w", i, err)
			}
			lowers[i] = d
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return lowers, nil
}

func (o *overlaySnapshotter) Prepare(ctx context.Context, layers []v1.Layer) (Active, error) {
	lowers, err := o.extracted(ctx, layers)
	if err != nil {
		return nil, fmt.Errorf("prepare overlay snapshot: %w", err)
	}
	lowers = topmostOnly(lowers)
	if len(lowers) == 0 {
		// overlayfs needs a lowerdir; an empty one stands for scratch.
		empty := filepath.Join(o.root, "l", "empty")
		if err := os.MkdirAll(empty, 0o755); err != nil {
			return nil, fmt.Errorf("prepare overlay snapshot: %w", err)
		}
		lowers = []string{empty}
	}
	dir, err := activeDir(o.active)
	if err != nil {
		return nil, err
	}
	a := &overlayActive{dir: dir, upper: filepath.Join(dir, "u"), work: filepath.Join(dir, "w"), layers: o.layers}
	opts, err := overlayOptions(lowers, a.upper, a.work, o.extra)
	if err == nil {
		err = os.Mkdir(a.upper, 0o755)
	}
	if err == nil {
		// Mkdir is subject to the umask; the root of the view is 0755.
		err = os.Chmod(a.upper, 0o755)
	}
	if err == nil {
		err = os.Mkdir(a.work, 0o700)
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("prepare overlay snapshot: %w", err)
	}
	a.opts = opts
	return a, nil
}

// topmostOnly drops every lower directory that appears again higher up
// (bottom first in, bottom first out). Overlayfs refuses a lowerdir list
// naming one directory twice ("too many levels of symbolic links"), and
// repeats are common: every "RUN true", or a RUN that writes only into a
// cache mount, yields the same empty layer. Dropping the lower copy keeps
// the view: a layer applied again re-applies every path it names (files,
// whiteouts, opaque markers), so its earlier copy shows through nowhere.
func topmostOnly(lowers []string) []string {
	seen := make(map[string]bool, len(lowers))
	out := make([]string, 0, len(lowers))
	for i := len(lowers) - 1; i >= 0; i-- {
		if !seen[lowers[i]] {
			seen[lowers[i]] = true
			out = append(out, lowers[i])
		}
	}
	slices.Reverse(out)
	return out
}

// overlayOptions builds the mount options, top-most lower first, and
// checks they fit the page the kernel copies mount data into.
func overlayOptions(lowers []string, upper, work string, extra []string) ([]string, error) {
	top := make([]string, len(lowers))
	for i, l := range lowers {
		top[len(lowers)-1-i] = l
	}
	opts := append([]string{
		"lowerdir=" + strings.Join(top, ":"),
		"upperdir=" + upper,
		"workdir=" + work,
	}, extra...)
	if n := len(strings.Join(opts, ",")); n >= unix.Getpagesize() {
		perLayer := len(lowers[0]) + 1
		limit := (unix.Getpagesize() - 1 - (n - len(lowers)*perLayer)) / perLayer
		return nil, fmt.Errorf("%d layers need %d bytes of mount options, at most %d layers fit under this root: %w",
			len(lowers), n, limit, ErrTooManyLayers)
	}
	return opts, nil
}

type overlayActive struct {
	releaser
	dir, upper, work string
	opts             []string
	layers           *layerStore
}

func (a *overlayActive) Mounts() []mount.Mount {
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: append([]string(nil), a.opts...)}}
}

// Diff walks the upper directory: a 0/0 character device is a deletion,
// a directory marked opaque hides all lower content, anything else was
// created or modified (a directory copied up only because a child
// changed is listed too; the layer writes every parent anyway).
func (a *overlayActive) Diff(ctx context.Context) (Changes, string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return Changes{}, "", err
	}
	var ch Changes
	// Through descriptors: a tree nested thousands deep costs linear time.
	err := archive.Walk(ctx, a.upper, func(e *archive.Entry) error {
		switch {
		case e.Stat.Mode&unix.S_IFMT == unix.S_IFCHR && e.Stat.Rdev == 0:
			ch.Deleted = append(ch.Deleted, e.Rel)
		case e.IsDir():
			opaque, err := isOpaqueFD(e.FD)
			if err != nil {
				return fmt.Errorf("/%s: %w", e.Rel, err)
			}
			if opaque {
				ch.Opaque = append(ch.Opaque, e.Rel)
			}
			ch.Paths = append(ch.Paths, e.Rel)
		default:
			ch.Paths = append(ch.Paths, e.Rel)
		}
		return nil
	})
	if err != nil {
		return Changes{}, "", fmt.Errorf("diff overlay upper dir: %w", err)
	}
	return ch, a.upper, nil
}

// Commit only closes the snapshot: the next Prepare extracts the new layer
// from its tar like any other, so a reused upper dir can never differ from
// what a fresh runner gets (the layer clamps times and drops xattrs).
// Commit adopts the upper directory as the extracted form of l, as
// containerd's overlay snapshotter does with committed snapshots: it holds
// exactly what l's tar was written from, in overlay form (0/0 devices for
// deletions, opaque xattrs), so the next step's Prepare need not extract
// the layer it just wrote. If the layer is already extracted, or the move
// fails, nothing is lost: Prepare extracts from the tar as before.
func (a *overlayActive) Commit(_ context.Context, l v1.Layer) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.usable(); err != nil {
		return err
	}
	a.committed = true
	if l != nil {
		if h, err := l.DiffID(); err == nil {
			a.layers.adopt(h, a.upper)
		}
	}
	return nil
}

func (a *overlayActive) Release() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.released {
		return nil
	}
	if err := os.RemoveAll(a.dir); err != nil {
		return fmt.Errorf("release overlay snapshot: %w", err)
	}
	a.released = true
	return nil
}
