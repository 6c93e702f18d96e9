package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/gc"
	"github.com/kiln-build/kiln/internal/lock"
)

// BlobPin is the lease pin that keeps a local cache blob (and the records
// naming it) while a build uses it.
func BlobPin(d v1.Hash) string { return "blob:" + d.String() }

// SetLease makes Get and Put pin the blobs they hand out or write in
// lease, so a concurrent collection (package gc) keeps them until the
// build ends. Call it before the Local is shared.
func (l *Local) SetLease(lease *gc.Lease) { l.lease = lease }

func (l *Local) pin(ctx context.Context, d Descriptor) error {
	if l.lease == nil || d.IsZero() {
		return nil
	}
	return l.lease.Pin(ctx, BlobPin(d.Digest))
}

// GC returns the cache as a gc.Source: one item per blob with every
// record naming it (last used = the newest record's), one per record
// without a layer.
func (l *Local) GC() gc.Source { return localGC{l} }

type localGC struct{ l *Local }

// Superseded returns the diffIDs of layers every record of which has been
// replaced: its step's index entry names a newer key. Their extracted
// forms are unlikely to be used again (a rebuilt COPY of a changed file).
func (l *Local) Superseded(ctx context.Context) (map[v1.Hash]bool, error) {
	keys, err := l.keys(ctx)
	if err != nil {
		return nil, err
	}
	current := map[v1.Hash]bool{}
	out := map[v1.Hash]bool{}
	latest := map[string]string{}
	for _, k := range keys {
		rec, err := l.readRecord(k)
		if err != nil || rec.Layer.IsZero() {
			continue
		}
		d := rec.Layer.DiffID
		if rec.StepID == "" {
			current[d] = true
			continue
		}
		cur, ok := latest[rec.StepID]
		if !ok {
			b, _ := os.ReadFile(l.stepPath(rec.StepID))
			cur = strings.TrimSpace(string(b))
			latest[rec.StepID] = cur
		}
		if cur == rec.Key.String() || cur == "" {
			current[d] = true
		} else {
			out[d] = true
		}
	}
	for d := range current {
		delete(out, d)
	}
	return out, nil
}

// Items is one item per blob with the records naming it, except that a
// record and the records it requires (a cache mount's manifest and its
// packs) are one item: evicting a pack alone would leave the manifest
// restoring part of the mount.
func (s localGC) Items(ctx context.Context) ([]gc.Item, error) {
	l := s.l
	keys, err := l.keys(ctx)
	if err != nil {
		return nil, err
	}
	var recs []Record
	byKey := map[digest.Digest]int{}
	for _, k := range keys {
		rec, err := l.readRecord(k)
		if err != nil {
			continue // swept
		}
		byKey[k] = len(recs)
		recs = append(recs, rec)
	}
	// Records sharing a blob, or one requiring another, are one group.
	parent := make([]int, len(recs))
	for i := range parent {
		parent[i] = i
	}
	find := func(i int) int {
		for parent[i] != i {
			parent[i] = parent[parent[i]]
			i = parent[i]
		}
		return i
	}
	union := func(a, b int) { parent[find(a)] = find(b) }
	firstOfBlob := map[v1.Hash]int{}
	for i, rec := range recs {
		if !rec.Layer.IsZero() {
			if j, ok := firstOfBlob[rec.Layer.Digest]; ok {
				union(i, j)
			} else {
				firstOfBlob[rec.Layer.Digest] = i
			}
		}
		for _, k := range Requires(rec) {
			if j, ok := byKey[k]; ok {
				union(i, j)
			}
		}
	}
	groups := map[int][]Record{}
	var roots []int
	for i, rec := range recs {
		r := find(i)
		if _, ok := groups[r]; !ok {
			roots = append(roots, r)
		}
		groups[r] = append(groups[r], rec)
	}
	items := make([]gc.Item, 0, len(roots))
	for _, root := range roots {
		rs := groups[root]
		it := gc.Item{Kind: gc.KindCache}
		var blobs []v1.Hash
		seen := map[v1.Hash]bool{}
		for _, rec := range rs {
			if rec.LastUsed.After(it.LastUsed) {
				it.LastUsed = rec.LastUsed
			}
			if d := rec.Layer.Digest; !rec.Layer.IsZero() && !seen[d] {
				seen[d] = true
				blobs = append(blobs, d)
				it.Pins = append(it.Pins, BlobPin(d))
			}
		}
		switch {
		case len(blobs) == 0:
			it.Name = "record " + short(rs[0].Key)
		case len(blobs) == 1:
			it.Name = "blob " + short(digest.Digest(blobs[0].String()))
		default:
			it.Name = fmt.Sprintf("blob %s and %d it requires", short(digest.Digest(blobs[0].String())), len(blobs)-1)
		}
		if len(blobs) > 0 {
			it.Frees = func() bool {
				for _, d := range blobs {
					if gc.SoleLink(l.blobPath(d)) {
						return true
					}
				}
				return false
			}
		}
		it.Remove = func(f *gc.Freer) error {
			if err := l.removeRecords(f, rs); err != nil {
				return err
			}
			for _, d := range blobs {
				if err := f.RemoveAll(l.blobPath(d)); err != nil {
					return err
				}
			}
			return nil
		}
		items = append(items, it)
	}
	return items, nil
}

// removeRecords deletes record files, and step index entries naming them.
func (l *Local) removeRecords(f *gc.Freer, rs []Record) error {
	for _, r := range rs {
		if r.StepID != "" {
			p := l.stepPath(r.StepID)
			if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == r.Key.String() {
				if err := f.RemoveAll(p); err != nil {
					return err
				}
			}
		}
		if err := f.RemoveAll(l.recordPath(r.Key)); err != nil {
			return err
		}
	}
	return nil
}

// Sweep removes records whose blob is gone, blobs no record names (unless
// pinned: a Put writes its blob before its record), step index entries
// whose record is gone, and, when no build holds the cache's lock,
// temporary files.
func (s localGC) Sweep(ctx context.Context, f *gc.Freer, pins map[string]bool) error {
	l := s.l
	keys, err := l.keys(ctx)
	if err != nil {
		return err
	}
	named := map[string]bool{}
	live := map[string]bool{}
	for _, k := range keys {
		rec, err := l.readRecord(k)
		if errors.Is(err, ErrNotFound) || (err != nil && !errors.Is(err, fs.ErrPermission)) {
			if err := f.RemoveAll(l.recordPath(k)); err != nil {
				return err
			}
			continue
		}
		live[k.String()] = true
		if !rec.Layer.IsZero() {
			named[rec.Layer.Digest.Hex] = true
		}
	}
	des, err := os.ReadDir(filepath.Join(l.dir, "blobs", "sha256"))
	if err != nil {
		return fmt.Errorf("%s: sweep: %w", l, err)
	}
	for _, de := range des {
		if named[de.Name()] || pins[BlobPin(v1.Hash{Algorithm: "sha256", Hex: de.Name()})] {
			continue
		}
		if err := f.RemoveAll(filepath.Join(l.dir, "blobs", "sha256", de.Name())); err != nil {
			return err
		}
	}
	des, _ = os.ReadDir(filepath.Join(l.dir, "steps"))
	for _, de := range des {
		p := filepath.Join(l.dir, "steps", de.Name())
		b, err := os.ReadFile(p)
		if err == nil && live[strings.TrimSpace(string(b))] {
			continue
		}
		if err := f.RemoveAll(p); err != nil {
			return err
		}
	}
	// Temporary files are in-flight writes while any build runs.
	held, idle, err := lock.TryAcquire(filepath.Join(l.dir, "lock"), lock.Exclusive)
	if err != nil || !idle {
		return err
	}
	defer held.Unlock()
	des, _ = os.ReadDir(filepath.Join(l.dir, "tmp"))
	for _, de := range des {
		if err := f.RemoveAll(filepath.Join(l.dir, "tmp", de.Name())); err != nil {
			return err
		}
	}
	return nil
}

func short(d digest.Digest) string {
	e := d.Encoded()
	if len(e) > 12 {
		return e[:12]
	}
	return e
}

// BlobDir is the directory holding the cache's blobs, named by hex digest.
func (l *Local) BlobDir() string { return filepath.Join(l.dir, "blobs", "sha256") }
