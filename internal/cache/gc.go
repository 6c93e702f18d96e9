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

func (s localGC) Items(ctx context.Context) ([]gc.Item, error) {
	l := s.l
	keys, err := l.keys(ctx)
	if err != nil {
		return nil, err
	}
	byBlob := map[v1.Hash]*gc.Item{}
	var recs = map[v1.Hash][]Record{}
	var items []gc.Item
	for _, k := range keys {
		rec, err := l.readRecord(k)
		if err != nil {
			continue // swept
		}
		if rec.Layer.IsZero() {
			items = append(items, gc.Item{Kind: gc.KindCache, Name: "record " + short(k), LastUsed: rec.LastUsed,
				Remove: func(f *gc.Freer) error { return l.removeRecords(f, []Record{rec}) }})
			continue
		}
		d := rec.Layer.Digest
		it, ok := byBlob[d]
		if !ok {
			it = &gc.Item{Kind: gc.KindCache, Name: "blob " + short(digest.Digest(d.String())), Pins: []string{BlobPin(d)}}
			byBlob[d] = it
		}
		if rec.LastUsed.After(it.LastUsed) {
			it.LastUsed = rec.LastUsed
		}
		recs[d] = append(recs[d], rec)
	}
	for d, it := range byBlob {
		rs := recs[d]
		it.Frees = func() bool { return gc.SoleLink(l.blobPath(d)) }
		it.Remove = func(f *gc.Freer) error {
			if err := l.removeRecords(f, rs); err != nil {
				return err
			}
			return f.RemoveAll(l.blobPath(d))
		}
		items = append(items, *it)
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
