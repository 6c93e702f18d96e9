package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/gc"
)

// LayerPin is the lease pin that keeps the extracted form of the layer
// with diffID h: a build pins it before it looks the layer up.
func LayerPin(h v1.Hash) string { return "layer:" + shortID(h) }

// Store is the evictable content under a snapshotter root, for gc:
// extracted layers (root/l/<short diffID>) and the copy snapshotter's
// committed trees (root/c/<chain>). Both are caches of layer blobs: an
// evicted one is extracted or copied again when a build needs it. Active
// snapshots (root/a) belong to running builds and are never items.
type Store struct {
	Root string
	// Superseded says which extracted layers no build is expected to use
	// again (their step has a newer result), by LayerPin.
	Superseded map[string]bool
}

// Items lists extracted layers and committed trees, last used = the
// directory's modification time (touched whenever a build uses it).
func (s Store) Items(ctx context.Context) ([]gc.Item, error) {
	var items []gc.Item
	for _, sub := range []string{"l", "c"} {
		dir := filepath.Join(s.Root, sub)
		des, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("snapshots: %w", err)
		}
		for _, de := range des {
			name := de.Name()
			if !de.IsDir() || name == "empty" || strings.HasPrefix(name, "tmp-") {
				continue
			}
			fi, err := de.Info()
			if err != nil {
				continue
			}
			p := filepath.Join(dir, name)
			it := gc.Item{Kind: gc.KindSnapshots, Name: sub + "/" + name, LastUsed: fi.ModTime(),
				Remove: func(f *gc.Freer) error { return trash(f, dir, p) }}
			if sub == "l" {
				pin := "layer:" + name
				it.Pins = []string{pin}
				it.Superseded = s.Superseded[pin]
			}
			items = append(items, it)
		}
	}
	return items, nil
}

// Immutable reports whether p is an extracted layer or a committed tree:
// its content never changes while it has its name (gc.Measure walks it
// once).
func (s Store) Immutable(p string) bool {
	dir, name := filepath.Split(p)
	dir = filepath.Clean(dir)
	if name == "" || strings.HasPrefix(name, "tmp-") {
		return false
	}
	return dir == filepath.Join(s.Root, "l") || dir == filepath.Join(s.Root, "c")
}

// trash renames p out of its name before removing it, so a half-removed
// directory (a crash mid-way) is never taken for a whole one, and a
// committed tree a build takes over by rename is either taken whole or
// removed whole.
func trash(f *gc.Freer, dir, p string) error {
	tmp, err := os.MkdirTemp(dir, "tmp-gc-")
	if err != nil {
		return err
	}
	dst := filepath.Join(tmp, "x")
	if err := os.Rename(p, dst); err != nil {
		os.Remove(tmp)
		if errors.Is(err, fs.ErrNotExist) {
			return nil // taken over or removed meanwhile
		}
		return err
	}
	return f.RemoveAll(tmp)
}

// Sweep does nothing: the temporary directories under root (an
// extraction in flight, an active snapshot) may belong to a running build,
// so only SweepIdle removes them.
func (s Store) Sweep(ctx context.Context, f *gc.Freer, _ map[string]bool) error { return nil }

// SweepIdle removes every leftover temporary directory; call it only when
// no build runs on this root.
func (s Store) SweepIdle(f *gc.Freer) error {
	for _, sub := range []string{"l", "c", "a"} {
		dir := filepath.Join(s.Root, sub)
		des, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, de := range des {
			if sub == "a" || strings.HasPrefix(de.Name(), "tmp-") {
				if err := f.RemoveAll(filepath.Join(dir, de.Name())); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
