package output

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/gc"
	"github.com/kiln-build/kiln/internal/lock"
)

// StoreGC is kiln's image store as a gc.Source: one item per image
// (every index.json entry of one manifest digest), last used = the time
// the manifest blob was last written to the store. Removing an image
// removes the blobs no remaining image names; a layer blob hard-linked
// from the cache frees its bytes only when the cache drops it too.
type StoreGC struct{ Dir string }

func (s StoreGC) lockPath() string { return filepath.Join(s.Dir, ".kiln.lock") }

func (s StoreGC) Items(ctx context.Context) ([]gc.Item, error) {
	idx, err := readIndex(s.Dir)
	if err != nil || idx == nil {
		return nil, err
	}
	seen := map[v1.Hash]bool{}
	var items []gc.Item
	for _, m := range idx.Manifests {
		if seen[m.Digest] {
			continue
		}
		seen[m.Digest] = true
		d := m.Digest
		name := m.Annotations[annotationImageName]
		if name == "" {
			name = d.String()
		}
		var used time.Time
		if fi, err := os.Stat(filepath.Join(s.Dir, "blobs", d.Algorithm, d.Hex)); err == nil {
			used = fi.ModTime()
		}
		items = append(items, gc.Item{Kind: gc.KindImages, Name: name, LastUsed: used,
			Remove: func(f *gc.Freer) error { return s.remove(ctx, f, d) }})
	}
	return items, nil
}

// remove drops every entry of manifest d, then the blobs nothing names,
// under the store's lock (writers hold it while they add blobs too).
func (s StoreGC) remove(ctx context.Context, f *gc.Freer, d v1.Hash) error {
	held, err := lock.Acquire(ctx, s.lockPath(), lock.Exclusive)
	if err != nil {
		return err
	}
	defer held.Unlock()
	idx, err := readIndex(s.Dir)
	if err != nil || idx == nil {
		return err
	}
	var kept []v1.Descriptor
	for _, m := range idx.Manifests {
		if m.Digest != d {
			kept = append(kept, m)
		}
	}
	idx.Manifests = kept
	raw, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("encoding index: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(s.Dir, "index.json"), raw); err != nil {
		return err
	}
	return s.sweepLocked(f, idx)
}

// sweepLocked removes blobs that no manifest of idx reaches, through
// nested indexes (a multi-platform image, attestations) too.
func (s StoreGC) sweepLocked(f *gc.Freer, idx *v1.IndexManifest) error {
	named := map[string]bool{}
	var mark func(d v1.Hash)
	mark = func(d v1.Hash) {
		if named[d.Hex] {
			return
		}
		named[d.Hex] = true
		raw, err := os.ReadFile(filepath.Join(s.Dir, "blobs", d.Algorithm, d.Hex))
		if err != nil {
			return
		}
		// An image manifest or an index: whichever fields it has.
		var man struct {
			Config    v1.Descriptor   `json:"config"`
			Layers    []v1.Descriptor `json:"layers"`
			Manifests []v1.Descriptor `json:"manifests"`
		}
		if err := json.Unmarshal(raw, &man); err != nil {
			return
		}
		if man.Config.Digest.Hex != "" {
			named[man.Config.Digest.Hex] = true
		}
		for _, l := range man.Layers {
			named[l.Digest.Hex] = true
		}
		for _, m := range man.Manifests {
			mark(m.Digest)
		}
	}
	for _, m := range idx.Manifests {
		mark(m.Digest)
	}
	dir := filepath.Join(s.Dir, "blobs", "sha256")
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, de := range des {
		if !named[de.Name()] {
			if err := f.RemoveAll(filepath.Join(dir, de.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// Sweep removes blobs no image names (left by an interrupted write).
func (s StoreGC) Sweep(ctx context.Context, f *gc.Freer, _ map[string]bool) error {
	if _, err := os.Stat(s.Dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	held, err := lock.Acquire(ctx, s.lockPath(), lock.Exclusive)
	if err != nil {
		return err
	}
	defer held.Unlock()
	idx, err := readIndex(s.Dir)
	if err != nil {
		return err
	}
	if idx == nil {
		idx = &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	}
	return s.sweepLocked(f, idx)
}

// readIndex reads dir/index.json; nil when there is none.
func readIndex(dir string) (*v1.IndexManifest, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading index: %w", err)
	}
	idx := &v1.IndexManifest{}
	if err := json.Unmarshal(raw, idx); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, "index.json"), err)
	}
	return idx, nil
}
