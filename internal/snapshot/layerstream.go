package snapshot

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/archive"
)

// ErrLayerDigest is returned (wrapped) when a layer's bytes do not hash to
// the digest (compressed) or diffID (uncompressed) it is named by.
var ErrLayerDigest = errors.New("layer digest mismatch")

// openLayer returns l's uncompressed tar stream, read as its compressed
// bytes arrive (from the network for a remote layer: no temporary file) and
// decompressed by internal/archive's decoders (klauspost's gzip, about twice
// the standard library's speed, which go-containerregistry's Uncompressed
// uses). A layer that is a TarTee gets its copy of the tar from here. Both
// the compressed bytes and the tar are hashed on the way
// through: the stream ends in an error wrapping ErrLayerDigest, instead of
// io.EOF, when either differs from what the layer claims, so the caller
// must read it to its end (see drain) before keeping anything made of it.
func openLayer(ctx context.Context, l v1.Layer) (io.ReadCloser, error) {
	diffID, err := l.DiffID()
	if err != nil {
		return nil, fmt.Errorf("layer diffID: %w", err)
	}
	mt, err := l.MediaType()
	if err != nil || !compressedType(string(mt)) {
		// An uncompressed (or unknown) layer: asking for Compressed would
		// make go-containerregistry compress it first.
		rc, err := l.Uncompressed()
		if err != nil {
			return nil, fmt.Errorf("open layer %s: %w", diffID, err)
		}
		// Read ahead here too: a read blocked on a connection that stopped
		// sending then still ends when ctx does.
		ra := newReadAhead(ctx, newHashCheck(rc, "diffID", diffID), teeOf(l))
		return &layerStream{Reader: ra, close: func() error {
			err := rc.Close()
			ra.stop()
			return err
		}}, nil
	}
	digest, err := l.Digest()
	if err != nil {
		return nil, fmt.Errorf("layer digest: %w", err)
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, fmt.Errorf("open layer %s: %w", digest, err)
	}
	blob := newHashCheck(rc, "digest", digest)
	dr, _, err := archive.Decompress(blob)
	if err != nil {
		_ = rc.Close()
		return nil, fmt.Errorf("open layer %s: %w", digest, err)
	}
	ra := newReadAhead(ctx, newHashCheck(dr, "diffID", diffID), teeOf(l))
	return &layerStream{
		Reader: ra,
		blob:   blob,
		close: func() error {
			// The body first: that ends a producer blocked reading it,
			// and the decoder is closed only once nothing reads it.
			err := rc.Close()
			ra.stop()
			if derr := dr.Close(); err == nil {
				err = derr
			}
			return err
		},
	}, nil
}

// Read-ahead bounds: what decompression may run ahead of extraction, per
// layer. Together with fetchLimit this bounds a Prepare's buffers to a few
// MiB however large the layers.
const (
	readAheadChunks = 8
	readAheadSize   = 256 << 10
)

// readAhead decompresses (and hashes) in a goroutine of its own while the
// reader extracts, as `curl | tar -xz` runs gzip beside tar: on a machine
// whose file creation waits on the disk, the decoder keeps going meanwhile.
type readAhead struct {
	ctx     context.Context
	tee     *tarTee // nil: no copy wanted
	full    chan chunk
	free    chan []byte
	done    chan struct{}
	exited  chan struct{}
	cur     []byte
	buf     []byte // cur's whole buffer, returned to free once read
	err     error  // after cur, the stream's end or failure
	stopped bool
}

type chunk struct {
	b   []byte
	err error
}

func newReadAhead(ctx context.Context, src io.Reader, tee *tarTee) *readAhead {
	ra := &readAhead{
		ctx:    ctx,
		tee:    tee,
		full:   make(chan chunk, readAheadChunks),
		free:   make(chan []byte, readAheadChunks),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	for i := 0; i < readAheadChunks; i++ {
		ra.free <- make([]byte, readAheadSize)
	}
	go ra.produce(src)
	return ra
}

func (ra *readAhead) produce(src io.Reader) {
	defer close(ra.exited)
	if ra.tee != nil {
		// A stream stopped before its end leaves an incomplete copy.
		defer ra.tee.end(errTeeStopped)
	}
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.done:
			return
		}
		n := 0
		var err error
		for n < len(buf) && err == nil {
			var m int
			m, err = src.Read(buf[n:])
			n += m
		}
		select {
		case ra.full <- chunk{b: buf[:n], err: err}:
		case <-ra.done:
			return
		}
		if ra.tee != nil {
			// After the hand-over: extraction never waits for the copy
			// of a chunk it already has. The buffer stays as it is
			// until this goroutine takes it from free again.
			ra.tee.put(buf[:n], ra.done)
			if err != nil {
				ra.tee.finish(err)
			}
		}
		if err != nil {
			return
		}
	}
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if ra.buf != nil {
			ra.free <- ra.buf[:cap(ra.buf)]
			ra.buf = nil
		}
		if ra.err != nil {
			return 0, ra.err
		}
		if ra.stopped {
			return 0, errors.New("read after close")
		}
		var c chunk
		select {
		case c = <-ra.full:
		case <-ra.ctx.Done():
			// The producer may be stuck in a read that only closing
			// its source ends: Close does that.
			return 0, ra.ctx.Err()
		}
		ra.cur, ra.buf, ra.err = c.b, c.b, c.err
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// stop ends the producer and waits for it; its source must be failing or
// finished (the caller closed what it reads from) if it is inside a Read.
func (ra *readAhead) stop() {
	if ra.stopped {
		return
	}
	ra.stopped = true
	close(ra.done)
	<-ra.exited
}

func compressedType(mt string) bool {
	return strings.HasSuffix(mt, "gzip") || strings.HasSuffix(mt, "zstd")
}

type layerStream struct {
	io.Reader
	blob  io.Reader // the compressed bytes, when decompressed here
	close func() error
}

func (s *layerStream) Close() error { return s.close() }

// drain reads what the tar reader left of the stream (the end-of-archive
// padding, any trailing bytes, the compressed stream's end) so that both
// digests are checked; it returns the mismatch or read error if any.
func drain(rc io.Reader) error {
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return err
	}
	if s, ok := rc.(*layerStream); ok && s.blob != nil {
		if _, err := io.Copy(io.Discard, s.blob); err != nil {
			return err
		}
	}
	return nil
}

// hashCheck hashes what it reads and, at the end of the stream, returns an
// error wrapping ErrLayerDigest instead of io.EOF when the sum is not want.
type hashCheck struct {
	r    io.Reader
	h    hash.Hash
	what string
	want v1.Hash
	err  error // sticky once the end was checked
}

func newHashCheck(r io.Reader, what string, want v1.Hash) *hashCheck {
	return &hashCheck{r: r, h: sha256.New(), what: what, want: want}
}

func (c *hashCheck) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		err = io.EOF
		if c.want.Algorithm != "sha256" {
			err = fmt.Errorf("%w: %s %s: unsupported algorithm", ErrLayerDigest, c.what, c.want)
		} else if got := fmt.Sprintf("%x", c.h.Sum(nil)); got != c.want.Hex {
			err = fmt.Errorf("%w: %s is sha256:%s, want %s", ErrLayerDigest, c.what, got, c.want)
		}
		c.err = err
	}
	return n, err
}
