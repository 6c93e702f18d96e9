package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/registry"
)

// Registry is a cache kept in a registry as one cache manifest (see
// doc.go), or read from an image carrying inline cache. The whole index is
// loaded by OpenRegistry; lookups are then in memory. It is safe for
// concurrent use.
type Registry struct {
	ref  name.Reference
	opts registry.Options

	// readOnly: ref holds an image with inline cache, not a cache manifest;
	// writing would replace the image.
	readOnly bool

	mu sync.Mutex
	wo Bounds
	// records is the index as loaded or last flushed; blobs are the layer
	// digests its manifest names, all present in the repository.
	records map[digest.Digest]Record
	blobs   map[v1.Hash]bool
	staged  map[digest.Digest]*stagedRecord
	// lost are blobs the index names that the repository no longer has
	// (HasBlob, or a manifest PUT refused for them): the next Flush drops
	// the records naming them, unless it uploads them again.
	lost map[v1.Hash]bool
	// sent are the blobs Send uploaded, in the repository though no index
	// names them yet; Flush does not upload them again.
	sent map[v1.Hash]bool

	flushMu sync.Mutex // one Flush or Send at a time

	readTimeout time.Duration // per attempt of read; readTimeout
}

type stagedRecord struct {
	rec   Record
	layer v1.Layer
}

// Bounds bound what a store's Flush keeps, the same for a registry and a
// local directory (see keep). Set them with SetBounds; the zero value keeps
// everything.
type Bounds struct {
	// MaxAge drops records whose LastUsed is older than this at Flush
	// (0: no age limit).
	MaxAge time.Duration
	// MaxEntries keeps only the most recently used records (0: no limit).
	MaxEntries int
	// Now is the clock for LastUsed and MaxAge; nil means time.Now.
	Now func() time.Time
}

// OpenRegistry loads the cache at ref in one round trip: the manifest,
// then its config blob (again, up to 3 times, after a transient failure). A ref that does not exist is an empty cache; a
// registry that cannot be reached is an error wrapping
// registry.ErrUnreachable. When ref holds an image (its config is an image
// config), the cache is read from the image's inline cache field and the
// store is read-only (Put and Flush fail with ErrReadOnly).
func OpenRegistry(ctx context.Context, ref string, o registry.Options) (*Registry, error) {
	r, err := o.Reference(ref)
	if err != nil {
		return nil, fmt.Errorf("registry cache: %w", err)
	}
	c := &Registry{
		ref:     r,
		opts:    o,
		records: map[digest.Digest]Record{},
		blobs:   map[v1.Hash]bool{},
		staged:  map[digest.Digest]*stagedRecord{},
		sent:    map[v1.Hash]bool{},

		readTimeout: readTimeout,
	}
	idx, err := c.read(ctx)
	if err != nil {
		return nil, err
	}
	c.records, c.blobs, c.readOnly = idx.records, idx.blobs, idx.inline
	return c, nil
}

// remoteIndex is the cache at a ref as the registry holds it at one moment.
type remoteIndex struct {
	records map[digest.Digest]Record
	// blobs are the layer digests the manifest names, all present in the
	// repository.
	blobs map[v1.Hash]bool
	// inline: the ref holds an image read through its inline cache.
	inline bool
	// manifest is the digest of the manifest read, "" when there was none.
	manifest string
}

// readAttempts bounds how often read tries again after a transient
// failure: a body cut short or corrupted on the way (caught by the digest
// check), a 5xx that outlived the client's own retries, a reset.
const readAttempts = 3

// readTimeout bounds one attempt at reading the index (two small requests).
const readTimeout = 30 * time.Second

// read fetches the cache manifest at c.ref and its index, trying again
// after transient failures. A ref that does not exist is an empty index.
func (c *Registry) read(ctx context.Context) (remoteIndex, error) {
	for attempt := 1; ; attempt++ {
		// Each attempt is bounded: a registry that stops answering
		// mid-read costs a retry, not a build that hangs.
		actx, cancel := context.WithTimeout(ctx, c.readTimeout)
		idx, err := c.readOnce(actx)
		cancel()
		if err == nil || attempt == readAttempts || !transient(ctx, err) {
			return idx, err
		}
		if err := sleepCtx(ctx, time.Duration(attempt)*100*time.Millisecond); err != nil {
			return idx, err
		}
	}
}

// transient reports whether a failed read is worth repeating: not when
// the context ended, the registry cannot be reached at all, or the index
// is of a format this kiln does not read.
func transient(ctx context.Context, err error) bool {
	return ctx.Err() == nil && !errors.Is(err, registry.ErrUnreachable) && !errors.Is(err, ErrUnsupportedFormat)
}

// readOnce fetches the cache manifest at c.ref and its index: one manifest
// GET and one config blob GET.
func (c *Registry) readOnce(ctx context.Context) (remoteIndex, error) {
	idx := remoteIndex{records: map[digest.Digest]Record{}, blobs: map[v1.Hash]bool{}}
	img, err := registry.Image(ctx, c.ref.String(), v1.Platform{}, c.opts)
	if errors.Is(err, registry.ErrNotFound) {
		return idx, nil
	}
	if err != nil {
		return idx, fmt.Errorf("registry cache %s: %w", c.ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return idx, fmt.Errorf("registry cache %s: manifest: %w", c.ref, err)
	}
	if d, err := img.Digest(); err == nil {
		idx.manifest = d.String()
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		return idx, fmt.Errorf("registry cache %s: config: %w", c.ref, err)
	}
	if m.Config.MediaType == IndexMediaType {
		err = idx.loadIndex(m, raw)
	} else {
		idx.inline = true
		err = idx.loadInline(m, raw)
	}
	if err != nil {
		return idx, fmt.Errorf("registry cache %s: %w", c.ref, err)
	}
	return idx, nil
}

// loadIndex reads kiln's index. Records naming a blob that the manifest
// does not list are dropped: the registry only guarantees listed blobs.
func (c *remoteIndex) loadIndex(m *v1.Manifest, raw []byte) error {
	var idx wireIndex
	if err := json.Unmarshal(raw, &idx); err != nil {
		return fmt.Errorf("decoding index: %w", err)
	}
	if idx.Version < 1 || idx.Version > FormatVersion {
		return fmt.Errorf("index version %d, this kiln reads %d: %w", idx.Version, FormatVersion, ErrUnsupportedFormat)
	}
	for _, l := range m.Layers {
		c.blobs[l.Digest] = true
	}
	for _, w := range idx.Records {
		rec, err := fromWire(w)
		if err != nil {
			return fmt.Errorf("index: %w", err)
		}
		if !rec.Layer.IsZero() && !c.blobs[rec.Layer.Digest] {
			continue
		}
		c.records[rec.Key] = rec
	}
	return nil
}

// loadInline builds records from an image config's inline cache field, the
// manifest's layer descriptors and the config's diff_ids. No field is an
// empty cache.
func (c *remoteIndex) loadInline(m *v1.Manifest, raw []byte) error {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return fmt.Errorf("decoding image config: %w", err)
	}
	field, ok := fields[InlineField]
	if !ok {
		return nil
	}
	var inline inlineCache
	if err := json.Unmarshal(field, &inline); err != nil {
		return fmt.Errorf("decoding %s: %w", InlineField, err)
	}
	if inline.Version < 1 || inline.Version > FormatVersion {
		return fmt.Errorf("%s version %d, this kiln reads %d: %w", InlineField, inline.Version, FormatVersion, ErrUnsupportedFormat)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("decoding image config: %w", err)
	}
	// Each non-empty history entry made one layer, in order; when that
	// holds, a layer's created time is its entry's, as the build wrote it.
	var layerHistory []v1.History
	for _, h := range cfg.History {
		if !h.EmptyLayer {
			layerHistory = append(layerHistory, h)
		}
	}
	useHistory := len(layerHistory) == len(m.Layers)
	for _, e := range inline.Layers {
		key, err := digest.Parse(e.Key)
		if err != nil || e.Index < 0 || e.Index >= len(m.Layers) || e.Index >= len(cfg.RootFS.DiffIDs) {
			continue // a malformed entry costs a miss, not the whole cache
		}
		l := m.Layers[e.Index]
		created := cfg.Created.Time
		if useHistory && !layerHistory[e.Index].Created.IsZero() {
			created = layerHistory[e.Index].Created.Time
		}
		c.records[key] = Record{
			Key:      key,
			Layer:    Descriptor{MediaType: l.MediaType, Digest: l.Digest, DiffID: cfg.RootFS.DiffIDs[e.Index], Size: l.Size},
			Created:  created,
			LastUsed: cfg.Created.Time,
		}
		c.blobs[l.Digest] = true
	}
	return nil
}

// SetBounds sets the bounds Flush applies. Call it before Flush.
func (c *Registry) SetBounds(o Bounds) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wo = o
}

func (c *Registry) now() time.Time {
	c.mu.Lock()
	now := c.wo.Now
	c.mu.Unlock()
	if now == nil {
		return time.Now()
	}
	return now()
}

func (c *Registry) String() string { return "registry:" + c.ref.String() }

// ReadOnly reports whether the store was read from an image's inline cache.
func (c *Registry) ReadOnly() bool { return c.readOnly }

// Get answers from the index loaded by OpenRegistry (and extended by
// Flush): no request is made. Records Put but not yet flushed are not
// visible; a record whose blob HasBlob found lost is a miss.
func (c *Registry) Get(ctx context.Context, key digest.Digest) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rec, ok := c.records[key]
	if !ok {
		return Record{}, fmt.Errorf("%s: %s: %w", c, key, ErrNotFound)
	}
	if c.lost[rec.Layer.Digest] {
		return Record{}, fmt.Errorf("%s: %s: blob %s missing: %w", c, key, rec.Layer.Digest, ErrNotFound)
	}
	return rec, nil
}

// Previous returns the most recently created record with stepID.
func (c *Registry) Previous(ctx context.Context, stepID string) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var best Record
	found := false
	for _, r := range c.records {
		if stepID == "" || r.StepID != stepID {
			continue
		}
		if !found || newer(r, best) {
			best, found = r, true
		}
	}
	if !found {
		return Record{}, fmt.Errorf("%s: step %q: %w", c, stepID, ErrNotFound)
	}
	return best, nil
}

// newer orders records by Created, then LastUsed, then key (for a
// deterministic answer).
func newer(a, b Record) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.After(b.Created)
	}
	if !a.LastUsed.Equal(b.LastUsed) {
		return a.LastUsed.After(b.LastUsed)
	}
	return a.Key > b.Key
}

// HasBlob HEADs d's blob in the repository. A blob that is not there is
// remembered as lost (see Registry.lost).
func (c *Registry) HasBlob(ctx context.Context, d Descriptor) (bool, error) {
	rl, err := remote.Layer(c.ref.Context().Digest(d.Digest.String()), c.opts.RemoteOptions(ctx)...)
	if err != nil {
		return false, fmt.Errorf("%s: %w", c, err)
	}
	_, err = rl.Size()
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		c.markLost(d.Digest)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: checking blob %s: %w", c, d.Digest, err)
	}
	return true, nil
}

func (c *Registry) markLost(hs ...v1.Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lost == nil {
		c.lost = map[v1.Hash]bool{}
	}
	for _, h := range hs {
		c.lost[h] = true
		delete(c.blobs, h)
	}
}

// Layer returns a lazy layer, wrapped as a *remote.MountableLayer naming
// this repository, so that pushing an image built from cache hits to
// another repository of the same registry mounts the blob instead of
// downloading and re-uploading it. The blob is fetched, with ctx, only
// when the layer is read.
func (c *Registry) Layer(ctx context.Context, rec Record) (v1.Layer, error) {
	if rec.Layer.IsZero() {
		return nil, fmt.Errorf("%s: %s: %w", c, rec.Key, ErrNoLayer)
	}
	desc := rec.Layer
	src := c.ref.Context().Digest(desc.Digest.String())
	// The verifyReader around the whole (perhaps resumed) stream is the
	// one digest check: registry.Blob leaves it to us.
	fetch := func() (io.ReadCloser, error) {
		rc, err := registry.Blob(ctx, src, c.opts)
		if err != nil {
			return nil, fmt.Errorf("%s: fetching blob: %w", c, err)
		}
		return rc, nil
	}
	lazy, err := newLazyLayer(desc, func() (io.ReadCloser, error) {
		rc, err := fetch()
		if err != nil {
			return nil, err
		}
		return newVerifyReader(&resumingReader{ctx: ctx, fetch: fetch, rc: rc}, desc.Digest, desc.Size)
	})
	if err != nil {
		return nil, err
	}
	return &remote.MountableLayer{Layer: lazy, Reference: src}, nil
}

// resumingReader reads a blob and, when the connection breaks mid-body (a
// reset, a body cut short), fetches it again and skips what was already
// read, up to readAttempts times. The digest is checked over the whole
// stream by the verifyReader around it, so a resumed read is as safe as
// one in a piece.
type resumingReader struct {
	ctx   context.Context
	fetch func() (io.ReadCloser, error)
	rc    io.ReadCloser
	off   int64 // bytes delivered so far
	tries int
}

func (r *resumingReader) Read(p []byte) (int, error) {
	for {
		if r.rc == nil {
			rc, err := r.fetch()
			if err != nil {
				return 0, err
			}
			if _, err := io.CopyN(io.Discard, rc, r.off); err != nil {
				rc.Close()
				if r.retry(err) {
					continue
				}
				return 0, err
			}
			r.rc = rc
		}
		n, err := r.rc.Read(p)
		r.off += int64(n)
		if err == nil || errors.Is(err, io.EOF) || n > 0 {
			// Deliver what arrived; an error after data shows again on
			// the next Read.
			if err != nil && !errors.Is(err, io.EOF) {
				r.rc.Close()
				r.rc = nil
				if !r.retry(err) {
					return n, err
				}
				return n, nil
			}
			return n, err
		}
		r.rc.Close()
		r.rc = nil
		if !r.retry(err) {
			return 0, err
		}
	}
}

// retry counts one more attempt after err and says whether to make it.
func (r *resumingReader) retry(err error) bool {
	r.tries++
	return r.tries < readAttempts && transient(r.ctx, err) && !errors.Is(err, ErrDigestMismatch)
}

func (r *resumingReader) Close() error {
	if r.rc == nil {
		return nil
	}
	return r.rc.Close()
}
