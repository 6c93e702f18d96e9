package snapshot

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func prefetcher(t *testing.T, s Snapshotter) Prefetcher {
	t.Helper()
	p, ok := s.(Prefetcher)
	if !ok {
		t.Fatalf("the %s snapshotter is not a Prefetcher", s.Name())
	}
	return p
}

func TestOverlayPrefetchThenPrepareFetchesNothing(t *testing.T) {
	s, root := newTestSnapshotter(t, NameOverlay)
	var reads [2]atomic.Int32
	base := baseLayers(t)
	layers := []v1.Layer{countingLayer{Layer: base[0], reads: &reads[0]}, countingLayer{Layer: base[1], reads: &reads[1]}}
	// A Prepare that arrives while the prefetch runs waits for it instead
	// of starting a download of its own.
	var wg sync.WaitGroup
	var perr error
	wg.Go(func() { perr = prefetcher(t, s).Prefetch(context.Background(), layers) })
	a, err := s.Prepare(context.Background(), layers)
	must(t, err)
	defer a.Release()
	wg.Wait()
	must(t, perr)
	a2, err := s.Prepare(context.Background(), layers)
	must(t, err)
	must(t, a2.Release())
	for i := range reads {
		if got := reads[i].Load(); got != 1 {
			t.Errorf("layer %d read %d times, want once", i, got)
		}
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "l")); len(entries) != 2 {
		t.Errorf("root/l holds %v, want the 2 layers", entries)
	}
	// Prefetch itself made no active snapshot: only Prepare's is there.
	must(t, a.Release())
	if left, _ := os.ReadDir(filepath.Join(root, "a")); len(left) != 0 {
		t.Errorf("root/a holds %v after every snapshot was released", left)
	}
}

func TestOverlayPrefetchPins(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	if !OverlaySupported(root) {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: overlay not supported")
		}
		t.Skip("overlay not supported")
	}
	var mu sync.Mutex
	var pinned []string
	s, err := New(NameOverlay, root, WithPin(func(_ context.Context, ids ...string) error {
		mu.Lock()
		defer mu.Unlock()
		pinned = append(pinned, ids...)
		return nil
	}))
	must(t, err)
	layers := baseLayers(t)
	must(t, prefetcher(t, s).Prefetch(context.Background(), layers))
	for _, l := range layers {
		h, _ := l.DiffID()
		found := false
		for _, p := range pinned {
			found = found || p == LayerPin(h)
		}
		if !found {
			t.Errorf("Prefetch did not pin %s (pinned %v): an eviction could take it before Prepare", h, pinned)
		}
	}
}

// stallFirst's first download delivers half the blob, then hangs until
// closed; later downloads are whole.
type stallFirst struct {
	v1.Layer
	stalled chan struct{}
	opens   *atomic.Int32
}

func (l stallFirst) Compressed() (io.ReadCloser, error) {
	if l.opens.Add(1) > 1 {
		return l.Layer.Compressed()
	}
	return stallingLayer{Layer: l.Layer, stalled: l.stalled}.Compressed()
}

// failingReader delivers half the blob, then fails, as a connection reset
// mid-download does.
type failMidway struct{ v1.Layer }

func (l failMidway) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(io.MultiReader(strings.NewReader(string(b[:len(b)/2])), errReader{})), nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset by peer") }

// noPartials fails t if root holds anything but whole layers: no
// temporary extraction in the store or in the active dir.
func noPartials(t *testing.T, root string, wantLayers int) {
	t.Helper()
	layers, _ := os.ReadDir(filepath.Join(root, "l"))
	for _, e := range layers {
		if strings.HasPrefix(e.Name(), "tmp-") {
			t.Errorf("partial layer %s left in root/l", e.Name())
		}
	}
	if len(layers) != wantLayers {
		t.Errorf("root/l holds %v, want %d whole layers", layers, wantLayers)
	}
	if left, _ := os.ReadDir(filepath.Join(root, "a")); len(left) != 0 {
		t.Errorf("root/a (the build's private dir) holds %v", left)
	}
}

func TestOverlayPrefetchCancelledLeavesNoPartialLayer(t *testing.T) {
	s, root := newTestSnapshotter(t, NameOverlay)
	stalled := make(chan struct{})
	var opens atomic.Int32
	small := baseLayers(t)[0]
	big := stallFirst{Layer: bigLayer(t), stalled: stalled, opens: &opens}
	layers := []v1.Layer{small, big}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- prefetcher(t, s).Prefetch(ctx, layers) }()
	select {
	case <-stalled:
	case err := <-errc:
		t.Fatalf("Prefetch returned before the download stalled: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the download never stalled")
	}
	// Once the small layer is whole, the build fails elsewhere: its
	// context is cancelled.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if done, _ := os.ReadDir(filepath.Join(root, "l")); len(done) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the small layer was never extracted")
		}
	}
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Prefetch error = %v, want context.Canceled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a cancelled Prefetch did not return")
	}
	// The small layer finished and stays (it is whole); the big one is
	// gone without a trace.
	noPartials(t, root, 1)
	// The next build gets both, downloading the big one again.
	a, err := s.Prepare(context.Background(), layers)
	must(t, err)
	must(t, a.Release())
	noPartials(t, root, 2)
	if got := opens.Load(); got != 2 {
		t.Errorf("big layer opened %d times, want 2 (the cancelled download, then one)", got)
	}
}

// A Prepare waiting for a prefetch's extraction is not failed by the
// prefetch's cancellation: it extracts the layer itself.
func TestOverlayPrepareOutlivesCancelledPrefetch(t *testing.T) {
	s, root := newTestSnapshotter(t, NameOverlay)
	stalled := make(chan struct{})
	var opens atomic.Int32
	layers := []v1.Layer{stallFirst{Layer: bigLayer(t), stalled: stalled, opens: &opens}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- prefetcher(t, s).Prefetch(ctx, layers) }()
	<-stalled
	prep := make(chan error, 1)
	go func() {
		a, err := s.Prepare(context.Background(), layers)
		if err == nil {
			err = a.Release()
		}
		prep <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Prepare find the extraction in flight
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Prefetch error = %v, want context.Canceled", err)
	}
	select {
	case err := <-prep:
		must(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("Prepare did not finish after the prefetch it waited for was cancelled")
	}
	noPartials(t, root, 1)
}

func TestOverlayPrefetchFailedMidwayLeavesNoPartialLayer(t *testing.T) {
	s, root := newTestSnapshotter(t, NameOverlay)
	err := prefetcher(t, s).Prefetch(context.Background(), []v1.Layer{failMidway{bigLayer(t)}})
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("Prefetch error = %v, want the download's failure", err)
	}
	noPartials(t, root, 0)
}

// stallingTar is an uncompressed layer (no decoder in between) whose
// download delivers half the tar, then hangs until closed.
type stallingTar struct {
	v1.Layer
	stalled chan struct{}
}

func (l stallingTar) MediaType() (types.MediaType, error) { return types.OCIUncompressedLayer, nil }

func (l stallingTar) Uncompressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Uncompressed()
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	return &stallingReader{b: b[:len(b)/2], stalled: l.stalled, closed: make(chan struct{})}, nil
}

func TestOverlayPrefetchCancelledUncompressed(t *testing.T) {
	s, root := newTestSnapshotter(t, NameOverlay)
	stalled := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- prefetcher(t, s).Prefetch(ctx, []v1.Layer{stallingTar{Layer: bigLayer(t), stalled: stalled}})
	}()
	<-stalled
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Prefetch error = %v, want context.Canceled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a cancelled Prefetch of an uncompressed layer stayed blocked in its download")
	}
	noPartials(t, root, 0)
}
