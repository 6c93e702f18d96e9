package mountstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// Source reads packs from a store.
type Source struct{ Store cache.Store }

// OpenPack fetches p; the store verifies its digest as it is read.
func (s Source) OpenPack(ctx context.Context, p Pack) (io.ReadCloser, error) {
	l, err := s.Store.Layer(ctx, packRecord("", p))
	if err != nil {
		return nil, err
	}
	return l.Compressed()
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
}

func (s Sink) put(ctx context.Context, rec cache.Record, l v1.Layer) error {
	if s.Wrap != nil {
		l = s.Wrap(l)
	}
	rec.Created = time.Now().UTC()
	return s.W.Put(ctx, rec, l)
}

// HasPack reports whether the store's index still holds p's record, or
// From does (to copy it from).
func (s Sink) HasPack(ctx context.Context, p Pack) bool {
	if rec, err := s.W.Get(ctx, packKey(p.Digest)); err == nil && rec.Layer.Digest == hash(p.Digest) {
		return true
	}
	if s.From == nil {
		return false
	}
	rec, err := s.From.Get(ctx, packKey(p.Digest))
	return err == nil && rec.Layer.Digest == hash(p.Digest)
}

// KeepPack puts p's record again: no upload when the store holds its
// blob, else a copy from From.
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
	rec := cache.Record{Key: Key(s.ID), StepID: StepID(s.ID), Inputs: map[string]string{"mount": s.ID}}
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
