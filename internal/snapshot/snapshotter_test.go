package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/mount"
)

// countingLayer counts reads of a layer's content (a download, in real
// life) and can fail the first ones.
type countingLayer struct {
	v1.Layer
	reads     *atomic.Int32
	failFirst int32
}

func (c countingLayer) Uncompressed() (io.ReadCloser, error) {
	if n := c.reads.Add(1); n <= c.failFirst {
		return nil, errors.New("registry hiccup")
	}
	return c.Layer.Uncompressed()
}

// Compressed is what extraction downloads.
func (c countingLayer) Compressed() (io.ReadCloser, error) {
	if n := c.reads.Add(1); n <= c.failFirst {
		return nil, errors.New("registry hiccup")
	}
	return c.Layer.Compressed()
}

func TestOverlayPrepareExtractsOnce(t *testing.T) {
	s, root := newTestSnapshotter(t, NameOverlay)
	var reads [2]atomic.Int32
	base := baseLayers(t)
	layers := []v1.Layer{countingLayer{Layer: base[0], reads: &reads[0]}, countingLayer{Layer: base[1], reads: &reads[1]}}
	const n = 4
	actives := make([]Active, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { actives[i], errs[i] = s.Prepare(context.Background(), layers) })
	}
	wg.Wait()
	for i, err := range errs {
		must(t, err)
		defer actives[i].Release()
	}
	// A second snapshotter on the same root shares the extracted layers.
	s2, err := New(NameOverlay, root)
	must(t, err)
	a, err := s2.Prepare(context.Background(), layers)
	must(t, err)
	defer a.Release()
	for i := range reads {
		if got := reads[i].Load(); got != 1 {
			t.Errorf("layer %d read %d times, want once", i, got)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(root, "l"))
	if len(entries) != 2 {
		t.Errorf("root/l holds %d entries, want the 2 layers: %v", len(entries), entries)
	}
}

func TestOverlayFailedExtractionIsRetried(t *testing.T) {
	s, root := newTestSnapshotter(t, NameOverlay)
	var reads atomic.Int32
	l := countingLayer{Layer: baseLayers(t)[0], reads: &reads, failFirst: 1}
	if _, err := s.Prepare(context.Background(), []v1.Layer{l}); err == nil || !strings.Contains(err.Error(), "registry hiccup") {
		t.Fatalf("first Prepare error = %v, want the layer's failure", err)
	}
	a, err := s.Prepare(context.Background(), []v1.Layer{l})
	if err != nil {
		t.Fatalf("retry after a failed extraction: %v", err)
	}
	must(t, a.Release())
	entries, _ := os.ReadDir(filepath.Join(root, "l"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "tmp-") {
			t.Errorf("failed extraction left %s behind", e.Name())
		}
	}
}

func TestCopyCommitReusesTree(t *testing.T) {
	s, root := newTestSnapshotter(t, NameCopy)
	var calls atomic.Int32
	materialize = func(ctx context.Context, dir string, layers []v1.Layer) error {
		calls.Add(1)
		return Materialize(ctx, dir, layers)
	}
	t.Cleanup(func() { materialize = Materialize })

	layers := baseLayers(t)
	a, l := runStep(t, s, layers, stepNamed(t, "rename lower dir"))
	must(t, a.Commit(context.Background(), l))
	must(t, a.Release())
	if calls.Load() != 1 {
		t.Fatalf("materialized %d times for the first step, want 1", calls.Load())
	}
	layers = append(layers, l)
	// runStep checks the reused view equals the layers materialized, and
	// that the next diff is right.
	a2, l2 := runStep(t, s, layers, stepNamed(t, "delete lower file and dirs"))
	if calls.Load() != 1 {
		t.Errorf("Prepare(layers+[committed]) copied the tree again (%d materializations)", calls.Load())
	}
	if left, _ := os.ReadDir(filepath.Join(root, "c")); len(left) != 0 {
		t.Errorf("committed tree not taken over: %v", left)
	}
	must(t, a2.Release())
	// A chain never committed is materialized.
	a3, err := s.Prepare(context.Background(), append(layers, l2))
	must(t, err)
	must(t, a3.Release())
	if calls.Load() != 2 {
		t.Errorf("materializations = %d, want 2", calls.Load())
	}
}

func TestNew(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name, want string
		err        error
	}{
		{name: "copy", want: NameCopy},
		{name: "", want: NameOverlay},
		{name: "auto", want: NameOverlay},
		{name: "overlay", want: NameOverlay},
		{name: "zfs", err: ErrUnknownSnapshotter},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.want == NameOverlay && !OverlaySupported(root) {
				if os.Getenv("CI") == "true" {
					t.Fatal("CI=true: overlay not supported")
				}
				t.Skip("overlay not supported")
			}
			s, err := New(tt.name, root)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("New(%q) error = %v, want %v", tt.name, err, tt.err)
				}
				return
			}
			must(t, err)
			if s.Name() != tt.want {
				t.Errorf("New(%q).Name() = %q, want %q", tt.name, s.Name(), tt.want)
			}
		})
	}
	if _, err := New("overlay", filepath.Join(t.TempDir(), "a,b")); !errors.Is(err, ErrOverlayUnsupported) {
		t.Errorf("overlay under a root with a comma: err = %v", err)
	}
}

func TestOverlayOptionsLimit(t *testing.T) {
	lower := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "/var/lib/kiln/snapshots/l/0123456789abcdef"
		}
		return out
	}
	opts, err := overlayOptions(lower(3), "/u", "/w", []string{"redirect_dir=off"})
	must(t, err)
	if got := opts[0]; !strings.HasPrefix(got, "lowerdir=/var") || strings.Count(got, ":") != 2 {
		t.Errorf("lowerdir option = %q", got)
	}
	if _, err := overlayOptions(lower(200), "/u", "/w", nil); !errors.Is(err, ErrTooManyLayers) ||
		!strings.Contains(err.Error(), "at most 9") {
		t.Errorf("200 layers: err = %v, want ErrTooManyLayers naming the limit", err)
	}
}

func TestOverlayLowerOrder(t *testing.T) {
	s, _ := newTestSnapshotter(t, NameOverlay)
	layers := []v1.Layer{layerFrom(t, ent{name: "f", body: "bottom"}), layerFrom(t, ent{name: "f", body: "top"})}
	a, err := s.Prepare(context.Background(), layers)
	must(t, err)
	defer a.Release()
	target := t.TempDir()
	must(t, mount.All(a.Mounts(), target))
	defer mount.UnmountAll(target)
	if b, _ := os.ReadFile(filepath.Join(target, "f")); string(b) != "top" {
		t.Errorf("f = %q, want the top layer's", b)
	}
	if opts := strings.Join(a.Mounts()[0].Options, ","); !strings.Contains(opts, "redirect_dir=off") {
		t.Errorf("mount options %q lack redirect_dir=off", opts)
	}
	// Without volatile every step's unmount syncs the whole filesystem
	// under the snapshots: seconds after a big base was extracted.
	var u unix.Utsname
	must(t, unix.Uname(&u))
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err == nil && (major > 5 || major == 5 && minor >= 10) {
		if opts := a.Mounts()[0].Options; !slices.Contains(opts, "volatile") {
			t.Errorf("mount options %q lack volatile on Linux %d.%d", opts, major, minor)
		}
	}
}

func TestPrepareCancelled(t *testing.T) {
	for _, name := range []string{NameOverlay, NameCopy} {
		t.Run(name, func(t *testing.T) {
			s, root := newTestSnapshotter(t, name)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if _, err := s.Prepare(ctx, baseLayers(t)); !errors.Is(err, context.Canceled) {
				t.Fatalf("Prepare error = %v, want context.Canceled", err)
			}
			for _, sub := range []string{"a", "l"} {
				if left, _ := os.ReadDir(filepath.Join(root, sub)); len(left) != 0 {
					t.Errorf("cancelled Prepare left %v in root/%s", left, sub)
				}
			}
		})
	}
}
