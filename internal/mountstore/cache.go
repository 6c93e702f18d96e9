package mountstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/cache"
)

// Media types of the blobs. Registries store any media type in an image
// manifest's layers; images never reference these.
const (
	ManifestMediaType types.MediaType = "application/vnd.kiln.cachemount.manifest.v1+zstd"
	PackMediaType     types.MediaType = "application/vnd.kiln.cachemount.pack.v1+zstd"
)

// Key is the cache key mount id's manifest is stored under.
func Key(id string) digest.Digest {
	return digest.FromString("kiln.cachemount.v2\x00" + id)
}

func packKey(d digest.Digest) digest.Digest {
	return digest.FromString("kiln.cachemount.pack.v1\x00" + d.String())
}

// StepID is the StepID of mount id's manifest record.
func StepID(id string) string { return "cache-mount|" + id }

func hash(d digest.Digest) v1.Hash {
	return v1.Hash{Algorithm: string(d.Algorithm()), Hex: d.Encoded()}
}

// Load reads mount id's manifest from st. A store without one is
// cache.ErrNotFound.
func Load(ctx context.Context, st cache.Store, id string) (*Manifest, cache.Record, error) {
	rec, err := st.Get(ctx, Key(id))
	if err != nil {
		return nil, rec, err
	}
	if rec.Layer.IsZero() {
		return nil, rec, fmt.Errorf("cache mount %s: record without a manifest: %w", id, ErrBadManifest)
	}
	l, err := st.Layer(ctx, rec)
	if err != nil {
		return nil, rec, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, rec, err
	}
	defer rc.Close()
	m, err := Decode(rc)
	if err != nil {
		return nil, rec, fmt.Errorf("cache mount %s from %s: %w", id, st, err)
	}
	return m, rec, nil
}

// ErrIncomplete: the store lacks records of packs a manifest names (a
// bound or a collection by an older kiln evicted them, or a blob was
// lost). Restoring it would make part of the mount.
var ErrIncomplete = errors.New("cache mount manifest names packs the cache no longer holds")

// CheckPacks looks up the record of every pack m names in st (a lookup
// each, no download); for a local store the lookup also refreshes each
// pack's last use, so the size bound does not evict packs a manifest
// just restored. A store lacking any of them is ErrIncomplete.
func CheckPacks(ctx context.Context, st cache.Store, m *Manifest) error {
	var missing int
	for _, p := range m.Packs {
		rec, err := st.Get(ctx, packKey(p.Digest))
		if errors.Is(err, cache.ErrNotFound) || (err == nil && rec.Layer.Digest != hash(p.Digest)) {
			missing++
			continue
		}
		if err != nil {
			return err
		}
	}
	if missing > 0 {
		return fmt.Errorf("%d of its %d packs are gone: %w", missing, len(m.Packs), ErrIncomplete)
	}
	return nil
}

// Source reads packs from a store.
type Source struct {
	Store cache.Store
	// Unreadable, if set, collects the packs that could not be fetched or
	// read whole, for the save that follows (Sink.Unreadable).
	Unreadable *Unreadable
}

// OpenPack fetches p; the store verifies its digest as it is read.
func (s Source) OpenPack(ctx context.Context, p Pack) (io.ReadCloser, error) {
	l, err := s.Store.Layer(ctx, packRecord("", p))
	var rc io.ReadCloser
	if err == nil {
		rc, err = l.Compressed()
	}
	if err != nil {
		s.Unreadable.add(p.Digest)
		return nil, err
	}
	if s.Unreadable == nil {
		return rc, nil
	}
	return &noteFailure{ReadCloser: rc, fail: func() { s.Unreadable.add(p.Digest) }}, nil
}

// Unreadable is a set of packs a restore could not read whole (gone from
// the store, damaged, cut off). A save after it packs their chunks again
// rather than referencing them, so its manifest names only packs that
// were read back. Safe for concurrent use; a nil *Unreadable is empty.
type Unreadable struct {
	mu sync.Mutex
	d  map[digest.Digest]bool
}

func (u *Unreadable) add(d digest.Digest) {
	if u == nil {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.d == nil {
		u.d = map[digest.Digest]bool{}
	}
	u.d[d] = true
}

// Has reports whether pack d could not be read.
func (u *Unreadable) Has(d digest.Digest) bool {
	if u == nil {
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.d[d]
}

// noteFailure calls fail when a read fails (not at EOF).
type noteFailure struct {
	io.ReadCloser
	fail func()
}

func (r *noteFailure) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		r.fail()
	}
	return n, err
}

func packRecord(id string, p Pack) cache.Record {
	return cache.Record{
		Key:    packKey(p.Digest),
		Layer:  cache.Descriptor{MediaType: PackMediaType, Digest: hash(p.Digest), DiffID: hash(p.DiffID), Size: p.Size},
		StepID: "cache-mount-pack|" + id,
		Inputs: map[string]string{"mount": id},
	}
}

// Sink writes mount id's packs and manifest to a store as records.
type Sink struct {
	W  cache.Writer
	ID string
	// Wrap, if set, wraps each layer handed to the store (to count the
	// bytes it uploads).
	Wrap func(v1.Layer) v1.Layer
	// From, if set, is the store the base manifest came from when it is
	// not W (a branch's first build, restored from main's cache): packs
	// W lacks are copied from it (a registry skips the copy when the
	// repository holds the blob already) instead of being packed again.
	From cache.Store
	// Unreadable, if set, is the packs this build's restore could not
	// read: they are not reused, their chunks are packed again.
	Unreadable *Unreadable
	// Lost, if set, is told of each base pack that is not reused because
	// it is unreadable or its store no longer holds its blob (its chunks
	// are packed again from the files). It may be called concurrently.
	Lost func(p Pack, why string)
}

func (s Sink) put(ctx context.Context, rec cache.Record, l v1.Layer) error {
	if s.Wrap != nil {
		l = s.Wrap(l)
	}
	rec.Created = time.Now().UTC()
	return s.W.Put(ctx, rec, l)
}

// HasPack reports whether the store still holds p, or From does (to copy
// it from): its record is indexed and, for a store that can say so with a
// lookup (a registry, cache.BlobChecker), its blob is still there. An
// index can outlive a blob (a registry's retention policy, an operator);
// referencing it would make a manifest the registry refuses or a restore
// without its files, while this runner has the files to pack again.
func (s Sink) HasPack(ctx context.Context, p Pack) bool {
	if s.Unreadable.Has(p.Digest) {
		s.lost(p, "could not be read back by this build's restore")
		return false
	}
	// The base came from W or From: a pack neither holds was lost.
	why := "is no longer in " + s.W.String()
	for _, st := range []cache.Store{s.W, s.From} {
		if st == nil {
			continue
		}
		rec, err := st.Get(ctx, packKey(p.Digest))
		if err != nil || rec.Layer.Digest != hash(p.Digest) {
			continue
		}
		if bc, ok := st.(cache.BlobChecker); ok {
			if has, err := bc.HasBlob(ctx, rec.Layer); err != nil || !has {
				why = "is gone from " + st.String()
				if err != nil {
					why = "could not be checked: " + err.Error()
				}
				continue
			}
		}
		return true
	}
	s.lost(p, why)
	return false
}

func (s Sink) lost(p Pack, why string) {
	if s.Lost != nil {
		s.Lost(p, why)
	}
}

// KeepPack puts p's record again: no upload when the store holds its
// blob, else a copy from From. A record HasPack found without its blob
// is a miss of its store (cache.Registry.Get).
func (s Sink) KeepPack(ctx context.Context, p Pack) error {
	st := cache.Store(s.W)
	rec, err := s.W.Get(ctx, packKey(p.Digest))
	if err != nil && s.From != nil {
		st = s.From
		rec, err = s.From.Get(ctx, packKey(p.Digest))
	}
	if err != nil {
		return err
	}
	l, err := st.Layer(ctx, rec)
	if err != nil {
		return err
	}
	rec.StepID, rec.Inputs = "cache-mount-pack|"+s.ID, map[string]string{"mount": s.ID}
	return s.put(ctx, rec, l)
}

// PutPack puts a new pack.
func (s Sink) PutPack(ctx context.Context, p Pack, compressed []byte) error {
	l, err := blobLayer(compressed, PackMediaType, p.DiffID)
	if err != nil {
		return err
	}
	return s.put(ctx, packRecord(s.ID, p), l)
}

// Commit puts the manifest, after every pack it names. It returns the
// bytes it adds to the store: the manifest blob's compressed size, or 0
// when the store's manifest is this one already.
func (s Sink) Commit(ctx context.Context, m *Manifest) (int64, error) {
	comp, raw, err := m.Encode()
	if err != nil {
		return 0, err
	}
	l, err := blobLayer(comp, ManifestMediaType, digest.FromBytes(raw))
	if err != nil {
		return 0, err
	}
	// The record requires its packs, so a store's bounds keep or evict
	// the manifest and its packs together, never a pack it still names.
	packs := make([]string, len(m.Packs))
	for i, p := range m.Packs {
		packs[i] = packKey(p.Digest).String()
	}
	rec := cache.Record{Key: Key(s.ID), StepID: StepID(s.ID), Inputs: map[string]string{"mount": s.ID, cache.RequiresInput: strings.Join(packs, " ")}}
	added := int64(len(comp))
	if old, err := s.W.Get(ctx, rec.Key); err == nil && old.Layer.Digest == hash(digest.FromBytes(comp)) {
		added = 0
	}
	if err := s.put(ctx, rec, l); err != nil {
		return 0, err
	}
	return added, nil
}

// blobLayer is an in-memory blob as the v1.Layer cache.Writer takes.
func blobLayer(compressed []byte, mt types.MediaType, diffID digest.Digest) (v1.Layer, error) {
	return partial.CompressedToLayer(&memBlob{b: compressed, mt: mt, diffID: hash(diffID)})
}

type memBlob struct {
	b      []byte
	mt     types.MediaType
	diffID v1.Hash
}

func (m *memBlob) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(m.b))
	return h, err
}
func (m *memBlob) DiffID() (v1.Hash, error)            { return m.diffID, nil }
func (m *memBlob) Size() (int64, error)                { return int64(len(m.b)), nil }
func (m *memBlob) MediaType() (types.MediaType, error) { return m.mt, nil }
func (m *memBlob) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(m.b)), nil
}

// IsMissing reports whether err is a store without the mount.
func IsMissing(err error) bool { return errors.Is(err, cache.ErrNotFound) }
