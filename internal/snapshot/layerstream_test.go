package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// lyingLayer claims a digest or diffID its bytes do not have, as a
// corrupted or tampered blob would.
type lyingLayer struct {
	v1.Layer
	digest, diffID *v1.Hash
}

func (l lyingLayer) Digest() (v1.Hash, error) {
	if l.digest != nil {
		return *l.digest, nil
	}
	return l.Layer.Digest()
}

func (l lyingLayer) DiffID() (v1.Hash, error) {
	if l.diffID != nil {
		return *l.diffID, nil
	}
	return l.Layer.DiffID()
}

// bigLayer has enough files that extraction is well under way before the
// stream ends.
func bigLayer(t *testing.T) v1.Layer {
	ents := []ent{{name: "d/"}}
	for i := range 300 {
		ents = append(ents, ent{name: fmt.Sprintf("d/f%03d", i), body: fmt.Sprintf("file %d", i)})
	}
	return layerFrom(t, ents...)
}

func TestOverlayDigestMismatchLeavesNothing(t *testing.T) {
	other := v1.Hash{Algorithm: "sha256", Hex: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}
	for name, l := range map[string]v1.Layer{
		"diffID": lyingLayer{Layer: bigLayer(t), diffID: &other},
		"digest": lyingLayer{Layer: bigLayer(t), digest: &other},
	} {
		t.Run(name, func(t *testing.T) {
			s, root := newTestSnapshotter(t, NameOverlay)
			_, err := s.Prepare(context.Background(), []v1.Layer{l})
			if !errors.Is(err, ErrLayerDigest) {
				t.Fatalf("Prepare error = %v, want ErrLayerDigest", err)
			}
			t.Logf("error: %v", err)
			if left, _ := os.ReadDir(filepath.Join(root, "l")); len(left) != 0 {
				t.Errorf("a layer failing its %s left %v in root/l", name, left)
			}
		})
	}
}

func TestMaterializeDigestMismatch(t *testing.T) {
	other := v1.Hash{Algorithm: "sha256", Hex: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}
	err := Materialize(context.Background(), t.TempDir(), []v1.Layer{lyingLayer{Layer: bigLayer(t), diffID: &other}})
	if !errors.Is(err, ErrLayerDigest) {
		t.Fatalf("Materialize error = %v, want ErrLayerDigest", err)
	}
}

// stallingLayer's download delivers its first half, then hangs until it
// is closed, as a registry connection that stops sending would.
type stallingLayer struct {
	v1.Layer
	stalled chan struct{}
}

func (l stallingLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	return &stallingReader{b: b[:len(b)/2], stalled: l.stalled, closed: make(chan struct{})}, nil
}

type stallingReader struct {
	b       []byte
	stalled chan struct{}
	once    sync.Once
	closed  chan struct{}
	cOnce   sync.Once
}

func (r *stallingReader) Read(p []byte) (int, error) {
	if len(r.b) > 0 {
		n := copy(p, r.b)
		r.b = r.b[n:]
		return n, nil
	}
	r.once.Do(func() { close(r.stalled) })
	<-r.closed
	return 0, errors.New("connection closed")
}

func (r *stallingReader) Close() error { r.cOnce.Do(func() { close(r.closed) }); return nil }

func TestOverlayCancelledMidLayerLeavesNothing(t *testing.T) {
	s, root := newTestSnapshotter(t, NameOverlay)
	stalled := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := s.Prepare(ctx, []v1.Layer{stallingLayer{Layer: bigLayer(t), stalled: stalled}})
		errc <- err
	}()
	select {
	case <-stalled:
	case err := <-errc:
		t.Fatalf("Prepare returned before the download stalled: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the download never stalled")
	}
	// Mid-extraction, the partial layer is in the build's private
	// directory, never in the shared store: a kill now leaves it where
	// the sweep of dead builds removes it.
	if left, _ := os.ReadDir(filepath.Join(root, "l")); len(left) != 0 {
		t.Errorf("an extraction in flight has %v in the shared root/l", left)
	}
	if parts, _ := filepath.Glob(filepath.Join(root, "a", "tmp-layer-*")); len(parts) != 1 {
		t.Errorf("an extraction in flight has %v in the active dir, want one tmp-layer-*", parts)
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Prepare error = %v, want context.Canceled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a cancelled Prepare did not return")
	}
	for _, sub := range []string{"l", "a"} {
		if left, _ := os.ReadDir(filepath.Join(root, sub)); len(left) != 0 {
			t.Errorf("a cancelled extraction left %v in root/%s", left, sub)
		}
	}
}
