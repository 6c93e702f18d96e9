package solver

import (
	"context"
	"io"
	"os"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/progress"
	"github.com/kiln-build/kiln/internal/snapshot"
)

// readCounting counts how often a layer's bytes are opened: compressed
// (a download) and uncompressed (a download and an inflate).
type readCounting struct {
	v1.Layer
	compressed, uncompressed *atomic.Int32
	diffID                   *v1.Hash // a lie, when set
}

func (l readCounting) Compressed() (io.ReadCloser, error) {
	l.compressed.Add(1)
	return l.Layer.Compressed()
}

func (l readCounting) Uncompressed() (io.ReadCloser, error) {
	l.uncompressed.Add(1)
	return l.Layer.Uncompressed()
}

func (l readCounting) DiffID() (v1.Hash, error) {
	if l.diffID != nil {
		return *l.diffID, nil
	}
	return l.Layer.DiffID()
}

// The zstd copy of a base layer is encoded from the tar the extraction
// inflates: the gzip blob is read once, never inflated a second time, and
// the copy, verified, is what export records. A tar that is not the
// layer's leaves no copy in the cache.
func TestAlternateIsMadeFromTheExtraction(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the copy snapshotter needs root to chown, and CI=true")
		}
		t.Skip("the copy snapshotter needs root to chown")
	}
	gz, err := random.Layer(6<<20, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	diffID, _ := gz.DiffID()
	other := v1.Hash{Algorithm: "sha256", Hex: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}
	for name, lie := range map[string]*v1.Hash{"verified": nil, "wrong diffID": &other} {
		t.Run(name, func(t *testing.T) {
			var c, u atomic.Int32
			l := readCounting{Layer: gz, compressed: &c, uncompressed: &u, diffID: lie}
			want := diffID
			if lie != nil {
				want = *lie
			}
			b := &builder{sink: progress.Discard, tmp: t.TempDir()}
			b.cacheLayer.Dir = b.tmp
			snap, err := snapshot.New(snapshot.NameCopy, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			a, err := snap.Prepare(context.Background(), []v1.Layer{&teeLayer{Layer: l, b: b, diffID: want}})
			if lie == nil && err != nil {
				t.Fatal(err)
			}
			if a != nil {
				_ = a.Release()
			}
			b.alts.stop()
			if c.Load() != 1 || u.Load() != 0 {
				t.Errorf("the blob was opened %d times compressed, %d uncompressed; want once, compressed", c.Load(), u.Load())
			}
			st, err := cache.OpenLocal(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if err := b.exportAlternates(context.Background(), st); err != nil {
				t.Fatal(err)
			}
			rec, err := st.Get(context.Background(), altKey(want))
			if lie != nil {
				if err == nil {
					t.Fatalf("a copy of a tar that is not the layer's was recorded: %+v", rec.Layer)
				}
				return
			}
			if err != nil {
				t.Fatalf("no copy recorded: %v", err)
			}
			if rec.Layer.DiffID != diffID || rec.Layer.MediaType != types.OCILayerZStd {
				t.Fatalf("copy recorded as %+v, want a zstd blob of diffID %s", rec.Layer, diffID)
			}
			cl, err := st.Layer(context.Background(), rec)
			if err != nil {
				t.Fatal(err)
			}
			// The recorded blob decodes to the layer's tar.
			if _, err := image.Recompress(context.Background(), cl, image.LayerOptions{Dir: t.TempDir()}); err != nil {
				t.Fatalf("the recorded copy does not decode to its diffID: %v", err)
			}
		})
	}
}
