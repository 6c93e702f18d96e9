package cache

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/testenv"
)

// harness opens one implementation for the conformance suite.
type harness struct {
	// open returns an empty Writer, a function that opens a fresh reader
	// of the same cache (what the next build, maybe on another machine,
	// sees), and the transport counter (nil for stores without one).
	open func(t *testing.T) (w Writer, reopen func() Store, c *counter)
}

// TestConformance runs the Writer suite against every store.
func TestConformance(t *testing.T) {
	t.Run("local", func(t *testing.T) {
		runConformance(t, harness{open: openLocalHarness})
	})
	t.Run("registry", func(t *testing.T) {
		// One registry for the suite; each case uses its own repository.
		host := testenv.Registry(t)
		runConformance(t, harness{open: registryHarness(host)})
	})
}

func runConformance(t *testing.T, h harness) {
	base := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)

	t.Run("put then get returns the record", func(t *testing.T) {
		ctx := context.Background()
		w, reopen, _ := h.open(t)
		l, _ := newLayer(t)
		want := record(t, "a", "stage0 RUN make", l, base)
		if err := w.Put(ctx, want, l); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		for name, s := range map[string]Store{"writer": w, "reopened": reopen()} {
			got, err := s.Get(ctx, want.Key)
			if err != nil {
				t.Fatalf("%s: Get: %v", name, err)
			}
			if err := sameRecord(got, want); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if got.LastUsed.IsZero() {
				t.Errorf("%s: LastUsed not set", name)
			}
		}
	})

	t.Run("get miss is ErrNotFound", func(t *testing.T) {
		ctx := context.Background()
		w, reopen, _ := h.open(t)
		for name, s := range map[string]Store{"writer": w, "reopened": reopen()} {
			if _, err := s.Get(ctx, testKey("nothing")); !errors.Is(err, ErrNotFound) {
				t.Errorf("%s: Get of unknown key: err = %v, want ErrNotFound", name, err)
			}
		}
	})

	t.Run("layer reads back the exact bytes, lazily", func(t *testing.T) {
		ctx := context.Background()
		w, reopen, c := h.open(t)
		l, compressed := newLayer(t)
		uncompressed := readAll(t, l.Uncompressed)
		rec := record(t, "layer", "s", l, base)
		if err := w.Put(ctx, rec, l); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		s := reopen()
		if c != nil {
			c.reset()
		}
		got, err := s.Get(ctx, rec.Key)
		if err != nil {
			t.Fatal(err)
		}
		lay, err := s.Layer(ctx, got)
		if err != nil {
			t.Fatal(err)
		}
		d, err := describe(lay)
		if err != nil {
			t.Fatal(err)
		}
		if d != rec.Layer {
			t.Errorf("layer describes itself as %+v, want %+v", d, rec.Layer)
		}
		if c != nil {
			if n := c.snapshot().blobGETs; n != 0 {
				t.Fatalf("Get and Layer metadata made %d blob GETs, want 0", n)
			}
		}
		mustEqualBytes(t, "compressed", readAll(t, lay.Compressed), compressed)
		if c != nil {
			if n := c.snapshot().blobGETs; n == 0 {
				t.Errorf("reading the layer made no blob GET")
			}
		}
		mustEqualBytes(t, "uncompressed", readAll(t, lay.Uncompressed), uncompressed)
	})

	t.Run("layer verifies what it reads", func(t *testing.T) {
		ctx := context.Background()
		w, reopen, _ := h.open(t)
		l, _ := newLayer(t)
		rec := record(t, "verify", "s", l, base)
		if err := w.Put(ctx, rec, l); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// A record whose DiffID is wrong: the blob is fine, what it
		// decompresses to is not what the record promised.
		bad := rec
		bad.Layer.DiffID = v1.Hash{Algorithm: "sha256", Hex: rec.Layer.Digest.Hex}
		lay, err := reopen().Layer(ctx, bad)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := lay.Uncompressed()
		if err == nil {
			_, err = io.ReadAll(rc)
			rc.Close()
		}
		if !errors.Is(err, ErrDigestMismatch) {
			t.Errorf("reading a layer with a wrong DiffID: err = %v, want ErrDigestMismatch", err)
		}
	})

	t.Run("previous finds the newest record of a step", func(t *testing.T) {
		ctx := context.Background()
		w, reopen, _ := h.open(t)
		l1, _ := newLayer(t)
		l2, _ := newLayer(t)
		older := record(t, "old", "stage0 COPY . .", l1, base)
		newer := record(t, "new", "stage0 COPY . .", l2, base.Add(time.Hour))
		other := record(t, "other", "stage0 RUN x", l1, base.Add(2*time.Hour))
		for _, r := range []Record{older, other, newer} {
			if err := w.Put(ctx, r, map[string]v1.Layer{"old": l1, "new": l2, "other": l1}[nameOf(r, older, newer)]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		for name, s := range map[string]Store{"writer": w, "reopened": reopen()} {
			got, err := s.Previous(ctx, "stage0 COPY . .")
			if err != nil {
				t.Fatalf("%s: Previous: %v", name, err)
			}
			if err := sameRecord(got, newer); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if _, err := s.Previous(ctx, "stage9 RUN never"); !errors.Is(err, ErrNotFound) {
				t.Errorf("%s: Previous of unknown step: err = %v, want ErrNotFound", name, err)
			}
		}
	})

	t.Run("re-put is idempotent", func(t *testing.T) {
		ctx := context.Background()
		w, reopen, c := h.open(t)
		l, compressed := newLayer(t)
		rec := record(t, "again", "s", l, base)
		for i := range 2 {
			if c != nil {
				c.reset()
			}
			if err := w.Put(ctx, rec, l); err != nil {
				t.Fatalf("put %d: %v", i, err)
			}
			if err := w.Flush(ctx); err != nil {
				t.Fatalf("flush %d: %v", i, err)
			}
			if c != nil && i == 1 {
				if n := c.snapshot().uploadStarts; n > 1 {
					t.Errorf("second put started %d blob uploads, want at most the index", n)
				}
			}
		}
		s := reopen()
		got, err := s.Get(ctx, rec.Key)
		if err != nil {
			t.Fatal(err)
		}
		if err := sameRecord(got, rec); err != nil {
			t.Error(err)
		}
		lay, err := s.Layer(ctx, got)
		if err != nil {
			t.Fatal(err)
		}
		mustEqualBytes(t, "compressed", readAll(t, lay.Compressed), compressed)
	})

	t.Run("a step without a layer", func(t *testing.T) {
		ctx := context.Background()
		w, reopen, _ := h.open(t)
		rec := record(t, "env", "stage0 ENV A=1", nil, base)
		if err := w.Put(ctx, rec, nil); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		s := reopen()
		got, err := s.Get(ctx, rec.Key)
		if err != nil {
			t.Fatal(err)
		}
		if err := sameRecord(got, rec); err != nil {
			t.Error(err)
		}
		if _, err := s.Layer(ctx, got); !errors.Is(err, ErrNoLayer) {
			t.Errorf("Layer of a layerless record: err = %v, want ErrNoLayer", err)
		}
	})

	t.Run("put fills the descriptor from the layer", func(t *testing.T) {
		ctx := context.Background()
		w, reopen, _ := h.open(t)
		l, _ := newLayer(t)
		want := record(t, "fill", "s", l, base)
		bare := want
		bare.Layer = Descriptor{}
		if err := w.Put(ctx, bare, l); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := reopen().Get(ctx, want.Key)
		if err != nil {
			t.Fatal(err)
		}
		if got.Layer != want.Layer || got.Layer.MediaType != types.OCILayer {
			t.Errorf("layer = %+v, want %+v", got.Layer, want.Layer)
		}
	})

	t.Run("put refuses a blob that does not match its digest", func(t *testing.T) {
		ctx := context.Background()
		w, reopen, _ := h.open(t)
		l, _ := newLayer(t)
		other, _ := newLayer(t)
		rec := record(t, "liar", "s", other, base) // describes other, carries l
		err := w.Put(ctx, rec, l)
		if err == nil {
			err = w.Flush(ctx)
		}
		if err == nil {
			t.Fatal("a record naming another blob's digest was stored")
		}
		if _, err := reopen().Get(ctx, rec.Key); !errors.Is(err, ErrNotFound) {
			t.Errorf("after a refused put: Get err = %v, want ErrNotFound", err)
		}
	})
}

// nameOf maps the three records of the Previous test to their layers.
func nameOf(r, older, newer Record) string {
	switch r.Key {
	case older.Key:
		return "old"
	case newer.Key:
		return "new"
	}
	return "other"
}
