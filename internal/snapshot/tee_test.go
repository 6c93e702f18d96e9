package snapshot

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// teeing is a layer that wants a copy of its tar, into w.
type teeing struct {
	v1.Layer
	w     *copyWriter
	asked atomic.Int32
}

func (l *teeing) TeeTar() TarWriter {
	l.asked.Add(1)
	return l.w
}

// copyWriter keeps what it is given; with block set, each Write waits for
// it to be closed first.
type copyWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	block  chan struct{}
	wrote  chan struct{} // closed at the first Write
	once   sync.Once
	closed chan struct{}
	err    error
}

func newCopyWriter() *copyWriter {
	return &copyWriter{wrote: make(chan struct{}), closed: make(chan struct{})}
}

func (w *copyWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.wrote) })
	if w.block != nil {
		<-w.block
		return 0, errors.New("unblocked")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *copyWriter) CloseWithError(err error) error {
	w.err = err
	close(w.closed)
	return nil
}

// result waits for the writer to be closed.
func (w *copyWriter) result(t *testing.T) ([]byte, error) {
	t.Helper()
	select {
	case <-w.closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the tar copy was never closed")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Bytes(), w.err
}

func layerTar(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Uncompressed()
	must(t, err)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	must(t, err)
	return b
}

// randomLayer is bigger than what the read-ahead and the tee may buffer
// together, so a writer that stops taking bytes is felt by the extraction.
func randomLayer(t *testing.T) v1.Layer {
	randomOnce.Do(func() { randomL, randomErr = random.Layer(16<<20, types.DockerLayer) })
	must(t, randomErr)
	return randomL
}

var (
	randomOnce sync.Once
	randomL    v1.Layer
	randomErr  error
)

// The copy is the very tar whose diffID was checked, closed as whole; a
// later Prepare that finds the layer extracted asks for no copy.
func TestTeeGetsTheVerifiedTar(t *testing.T) {
	for _, name := range []string{NameOverlay, NameCopy} {
		t.Run(name, func(t *testing.T) {
			s, _ := newTestSnapshotter(t, name)
			base := randomLayer(t)
			l := &teeing{Layer: base, w: newCopyWriter()}
			a, err := s.Prepare(context.Background(), []v1.Layer{l})
			must(t, err)
			must(t, a.Release())
			got, err := l.w.result(t)
			if err != nil {
				t.Fatalf("copy closed with %v, want nil", err)
			}
			if !bytes.Equal(got, layerTar(t, base)) {
				t.Fatalf("copy is %d bytes, not the layer's %d-byte tar", len(got), len(layerTar(t, base)))
			}
			if name != NameOverlay {
				return // the copy snapshotter keeps no layer store
			}
			again := &teeing{Layer: base, w: newCopyWriter()}
			a, err = s.Prepare(context.Background(), []v1.Layer{again})
			must(t, err)
			must(t, a.Release())
			if n := again.asked.Load(); n != 0 {
				t.Errorf("a Prepare of an extracted layer asked for %d copies", n)
			}
		})
	}
}

// A tar that is not the layer's (its diffID differs) closes the copy with
// the mismatch, so whoever encodes it drops it.
func TestTeeOfWrongTarIsDropped(t *testing.T) {
	s, _ := newTestSnapshotter(t, NameOverlay)
	other := v1.Hash{Algorithm: "sha256", Hex: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}
	l := &teeing{Layer: lyingLayer{Layer: randomLayer(t), diffID: &other}, w: newCopyWriter()}
	if _, err := s.Prepare(context.Background(), []v1.Layer{l}); !errors.Is(err, ErrLayerDigest) {
		t.Fatalf("Prepare error = %v, want ErrLayerDigest", err)
	}
	if _, err := l.w.result(t); !errors.Is(err, ErrLayerDigest) {
		t.Fatalf("copy closed with %v, want ErrLayerDigest", err)
	}
}

// A cancelled extraction closes its copy as incomplete, even while the
// copy's writer is stuck.
func TestTeeOfCancelledExtractionIsDropped(t *testing.T) {
	s, _ := newTestSnapshotter(t, NameOverlay)
	w := newCopyWriter()
	w.block = make(chan struct{})
	defer close(w.block)
	l := &teeing{Layer: randomLayer(t), w: w}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-w.wrote
		cancel()
	}()
	if _, err := s.Prepare(ctx, []v1.Layer{l}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Prepare error = %v, want context.Canceled", err)
	}
	w.block <- struct{}{}
	if _, err := w.result(t); err == nil {
		t.Fatal("the copy of a cancelled extraction was closed as whole")
	}
}

// A writer that stops taking bytes costs the extraction a bounded wait,
// then its copy: the layer is still extracted.
func TestTeeThatFallsBehindIsGivenUp(t *testing.T) {
	s, _ := newTestSnapshotter(t, NameOverlay)
	w := newCopyWriter()
	w.block = make(chan struct{})
	l := &teeing{Layer: randomLayer(t), w: w}
	a, err := s.Prepare(context.Background(), []v1.Layer{l})
	close(w.block)
	must(t, err)
	must(t, a.Release())
	if _, err := w.result(t); !errors.Is(err, ErrTeeBehind) {
		t.Fatalf("copy closed with %v, want ErrTeeBehind", err)
	}
}
