package cache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// Descriptor is a cached layer blob.
type Descriptor struct {
	MediaType types.MediaType
	Digest    v1.Hash // of the compressed blob
	DiffID    v1.Hash // of the uncompressed tar
	Size      int64   // compressed bytes
}

// IsZero reports whether d names no blob: the step made no layer.
func (d Descriptor) IsZero() bool { return d.Digest == (v1.Hash{}) }

// Record is what one build step produced, stored under its key.
type Record struct {
	// Key is the sha256 of the step's inputs (internal/cachekey).
	Key digest.Digest
	// Layer is the step's layer; the zero Descriptor means "no layer".
	Layer Descriptor
	// Created is when the layer was first built. It is reused as the
	// history entry's created time so that a fully cached build reproduces
	// the image digest.
	Created time.Time
	// LastUsed is maintained by the stores: set on Put, refreshed by Get
	// hits (local) or by the build re-Putting the record (registry).
	LastUsed time.Time
	// StepID names "the same step" across builds (stage + instruction
	// text); Previous uses it to explain misses.
	StepID string
	// Inputs says what the key was computed from, by name ("file:src/x"
	// -> digest, "arg:V" -> digest of value, "base" -> manifest digest).
	// Never secret values.
	Inputs map[string]string
}

// RequiresInput is the Inputs entry listing, space-separated, the keys
// of the records a record is useless without (a cache mount manifest's
// packs). The stores' bounds keep or evict such a record and what it
// requires as one unit, so they never leave a manifest whose packs are
// gone; a record requiring one the store lacks is dropped by the next
// registry flush.
const RequiresInput = "requires"

// Requires is the keys r names in Inputs[RequiresInput].
func Requires(r Record) []digest.Digest {
	f := strings.Fields(r.Inputs[RequiresInput])
	out := make([]digest.Digest, 0, len(f))
	seen := make(map[string]bool, len(f))
	for _, s := range f {
		if !seen[s] {
			seen[s] = true
			out = append(out, digest.Digest(s))
		}
	}
	return out
}

// Sentinel errors. Match them with errors.Is.
var (
	// ErrNotFound: the key (or step) is not in the cache.
	ErrNotFound = errors.New("not in the cache")
	// ErrReadOnly: the store cannot be written (a registry ref holding an
	// image with inline cache, not a cache manifest).
	ErrReadOnly = errors.New("cache is read-only")
	// ErrUnsupportedFormat: the store was written by a kiln with a newer,
	// unknown on-disk or on-registry format version.
	ErrUnsupportedFormat = errors.New("unsupported cache format")
	// ErrNoLayer: Layer was asked for a record whose step made no layer.
	ErrNoLayer = errors.New("cache record has no layer")
	// ErrDigestMismatch: blob bytes do not match the digest they were
	// stored or fetched under.
	ErrDigestMismatch = errors.New("cache blob digest mismatch")
)

// Store is a cache that can be read.
type Store interface {
	// String names the store for messages: "local:/path" or
	// "registry:host/repo:tag".
	String() string
	// Get looks up key. A miss is ErrNotFound. It never downloads a layer.
	Get(ctx context.Context, key digest.Digest) (Record, error)
	// Previous returns the newest record with this StepID (to explain a
	// miss), or ErrNotFound.
	Previous(ctx context.Context, stepID string) (Record, error)
	// Layer returns a lazy layer for rec: Digest, DiffID, Size and
	// MediaType answer from rec without I/O; Compressed and Uncompressed
	// fetch the blob, and verify its digest, only when read.
	Layer(ctx context.Context, rec Record) (v1.Layer, error)
}

// Writer is a cache that can be written.
type Writer interface {
	Store
	// Put records a step: the blob first (read from l.Compressed() unless
	// the store already holds that digest), then the record. Local:
	// immediate and atomic. Registry: staged until Flush. l may be nil
	// when rec.Layer is zero (a step without a layer); when rec.Layer is
	// zero and l is not nil, rec.Layer is filled in from l.
	Put(ctx context.Context, rec Record, l v1.Layer) error
	// Flush makes everything Put visible. Registry: uploads missing blobs,
	// then writes the index last. Local: no-op.
	Flush(ctx context.Context) error
}

// BlobChecker is a store that can confirm, with one lookup and no
// download, that a blob its index names is still stored. A registry's
// index can name a blob the registry has since lost (deleted by an
// operator or a retention policy); a writer about to reference such a
// blob instead of uploading it asks first. A store without it (Local,
// whose Get is a miss when the blob is gone) needs no asking.
type BlobChecker interface {
	// HasBlob reports whether d's blob is stored; a blob it reports
	// missing is not named by the next index the store writes, unless a
	// Put uploads it again.
	HasBlob(ctx context.Context, d Descriptor) (bool, error)
}

// Sender is the optional power of a Writer whose Put only stages (a
// registry): Send uploads the blobs of what was Put so far, so that the
// uploads overlap the caller's other work instead of waiting for Flush.
// Nothing becomes visible before Flush, which then sends only what was
// Put after and the index. An error leaves Flush to send those blobs.
type Sender interface {
	Send(ctx context.Context) error
}

// Interface checks.
var (
	_ Writer      = (*Local)(nil)
	_ Writer      = (*Registry)(nil)
	_ BlobChecker = (*Registry)(nil)
	_ Sender      = (*Registry)(nil)
)

// prepare validates rec for Put and fills its Layer descriptor from l when
// the caller left it empty.
func prepare(rec Record, l v1.Layer) (Record, error) {
	if err := rec.Key.Validate(); err != nil {
		return rec, fmt.Errorf("cache record key %q: %w", rec.Key, err)
	}
	if rec.Layer.IsZero() {
		if l == nil {
			return rec, nil
		}
		d, err := describe(l)
		if err != nil {
			return rec, fmt.Errorf("cache record %s: %w", rec.Key, err)
		}
		rec.Layer = d
		return rec, nil
	}
	if l == nil {
		return rec, fmt.Errorf("cache record %s names blob %s but no layer was given", rec.Key, rec.Layer.Digest)
	}
	if got, err := l.Digest(); err != nil {
		return rec, fmt.Errorf("cache record %s: layer digest: %w", rec.Key, err)
	} else if got != rec.Layer.Digest {
		return rec, fmt.Errorf("cache record %s names blob %s but the layer is %s: %w", rec.Key, rec.Layer.Digest, got, ErrDigestMismatch)
	}
	if rec.Layer.Digest.Algorithm != "sha256" {
		return rec, fmt.Errorf("cache record %s: blob digest %s: only sha256 is supported", rec.Key, rec.Layer.Digest)
	}
	return rec, nil
}

// describe reads a layer's descriptor. For lazy layers these are answered
// from metadata; for fresh layers ggcr computes them once.
func describe(l v1.Layer) (Descriptor, error) {
	var d Descriptor
	var err error
	if d.Digest, err = l.Digest(); err != nil {
		return d, fmt.Errorf("layer digest: %w", err)
	}
	if d.DiffID, err = l.DiffID(); err != nil {
		return d, fmt.Errorf("layer diffID: %w", err)
	}
	if d.Size, err = l.Size(); err != nil {
		return d, fmt.Errorf("layer size: %w", err)
	}
	if d.MediaType, err = l.MediaType(); err != nil {
		return d, fmt.Errorf("layer media type: %w", err)
	}
	return d, nil
}

// verifyReader hashes what it reads and, at EOF, fails the read unless the
// bytes had the expected digest (and size, when size >= 0). A reader that
// is closed before EOF verifies nothing, like ggcr's own.
type verifyReader struct {
	rc   io.ReadCloser
	h    hash.Hash
	want v1.Hash
	size int64
	n    int64
}

func newVerifyReader(rc io.ReadCloser, want v1.Hash, size int64) (io.ReadCloser, error) {
	if want.Algorithm != "sha256" {
		rc.Close()
		return nil, fmt.Errorf("verify %s: only sha256 is supported", want)
	}
	return &verifyReader{rc: rc, h: sha256.New(), want: want, size: size}, nil
}

func (v *verifyReader) Read(p []byte) (int, error) {
	n, err := v.rc.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.size >= 0 && v.n > v.size {
		return n, fmt.Errorf("%w: %s: more than %d bytes", ErrDigestMismatch, v.want, v.size)
	}
	if errors.Is(err, io.EOF) {
		if v.size >= 0 && v.n != v.size {
			return n, fmt.Errorf("%w: %s: %d bytes, want %d", ErrDigestMismatch, v.want, v.n, v.size)
		}
		got := fmt.Sprintf("%x", v.h.Sum(nil))
		if got != v.want.Hex {
			return n, fmt.Errorf("%w: got sha256:%s, want %s", ErrDigestMismatch, got, v.want)
		}
	}
	return n, err
}

func (v *verifyReader) Close() error { return v.rc.Close() }
