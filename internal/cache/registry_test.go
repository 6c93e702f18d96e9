package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/registry"
	"github.com/kiln-build/kiln/internal/testenv"
)

var repoSeq atomic.Int64

// newRepo names a fresh cache ref on host.
func newRepo(host string) string {
	return fmt.Sprintf("%s/cache%d:buildcache", host, repoSeq.Add(1))
}

func registryHarness(host string) func(t *testing.T) (Writer, func() Store, *counter) {
	return func(t *testing.T) (Writer, func() Store, *counter) {
		ref := newRepo(host)
		c := &counter{}
		w := openReg(t, ref, c)
		return w, func() Store { return openReg(t, ref, c) }, c
	}
}

func openReg(t testing.TB, ref string, c *counter) *Registry {
	t.Helper()
	o := registry.Options{}
	if c != nil {
		o.Transport = c
	}
	r, err := OpenRegistry(context.Background(), ref, o)
	if err != nil {
		t.Fatalf("OpenRegistry(%s): %v", ref, err)
	}
	return r
}

// putFlush puts records (each with its own fresh layer) and flushes.
func putFlush(t testing.TB, w Writer, names ...string) map[string]Record {
	t.Helper()
	ctx := context.Background()
	out := map[string]Record{}
	for _, n := range names {
		l, _ := newLayer(t)
		rec := record(t, n, "step "+n, l, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
		if err := w.Put(ctx, rec, l); err != nil {
			t.Fatal(err)
		}
		out[n] = rec
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	return out
}

func keysOf(t testing.TB, s *Registry) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.records {
		out[k.String()] = true
	}
	return out
}

func TestRegistry(t *testing.T) {
	host := testenv.Registry(t)
	ctx := context.Background()

	t.Run("missing ref is an empty writable cache", func(t *testing.T) {
		r := openReg(t, newRepo(host), nil)
		if _, err := r.Get(ctx, testKey("x")); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get: err = %v, want ErrNotFound", err)
		}
		if r.ReadOnly() {
			t.Error("an empty cache is read-only")
		}
		if !strings.HasPrefix(r.String(), "registry:"+host+"/cache") {
			t.Errorf("String() = %q", r.String())
		}
	})

	t.Run("a second flush keeps the old records", func(t *testing.T) {
		ref := newRepo(host)
		first := putFlush(t, openReg(t, ref, nil), "a", "b")
		second := putFlush(t, openReg(t, ref, nil), "c")
		back := openReg(t, ref, nil)
		for _, set := range []map[string]Record{first, second} {
			for n, want := range set {
				got, err := back.Get(ctx, want.Key)
				if err != nil {
					t.Fatalf("%s lost: %v", n, err)
				}
				if err := sameRecord(got, want); err != nil {
					t.Error(err)
				}
			}
		}
		m := manifestOf(t, ref)
		if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != IndexMediaType || len(m.Layers) != 3 {
			t.Errorf("manifest: mediaType %s, config %s, %d layers; want OCI manifest, kiln index, 3 layers", m.MediaType, m.Config.MediaType, len(m.Layers))
		}
	})

	t.Run("max entries and max age prune at flush", func(t *testing.T) {
		t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
		tests := []struct {
			name string
			wo   Bounds
			want []string
		}{
			{"no limits keep all", Bounds{}, []string{"d1", "d2", "d3", "d4"}},
			{"max entries keeps the most recently used", Bounds{MaxEntries: 2}, []string{"d3", "d4"}},
			{"max age drops the stale", Bounds{MaxAge: 36 * time.Hour}, []string{"d3", "d4"}},
			{"both", Bounds{MaxAge: 60 * time.Hour, MaxEntries: 1}, []string{"d4"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				ref := newRepo(host)
				// d1 used on day 0, d2 on day 1, d3 on day 2, d4 on day 3 (now).
				recs := map[string]Record{}
				for i, n := range []string{"d1", "d2", "d3"} {
					w := openReg(t, ref, nil)
					day := t0.Add(time.Duration(i) * 24 * time.Hour)
					w.SetBounds(Bounds{Now: func() time.Time { return day }})
					for k, v := range putFlush(t, w, n) {
						recs[k] = v
					}
				}
				w := openReg(t, ref, nil)
				wo := tt.wo
				wo.Now = func() time.Time { return t0.Add(72 * time.Hour) }
				w.SetBounds(wo)
				putFlush(t, w, "d4")
				got := keysOf(t, openReg(t, ref, nil))
				if len(got) != len(tt.want) {
					t.Errorf("kept %d records, want %v", len(got), tt.want)
				}
				for _, n := range tt.want {
					if !got[testKey(n).String()] {
						t.Errorf("%s was dropped", n)
					}
				}
				if m := manifestOf(t, ref); len(m.Layers) != len(tt.want) {
					t.Errorf("manifest names %d blobs, want %d", len(m.Layers), len(tt.want))
				}
			})
		}
	})

	t.Run("re-put refreshes last use", func(t *testing.T) {
		ref := newRepo(host)
		t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
		w := openReg(t, ref, nil)
		w.SetBounds(Bounds{Now: func() time.Time { return t0 }})
		old := putFlush(t, w, "kept", "dropped")
		w = openReg(t, ref, nil)
		w.SetBounds(Bounds{MaxAge: time.Hour, Now: func() time.Time { return t0.Add(48 * time.Hour) }})
		hit, err := w.Get(ctx, old["kept"].Key)
		if err != nil {
			t.Fatal(err)
		}
		lay, err := w.Layer(ctx, hit)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Put(ctx, hit, lay); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		got := keysOf(t, openReg(t, ref, nil))
		if !got[old["kept"].Key.String()] || got[old["dropped"].Key.String()] {
			t.Errorf("after re-putting one of two stale records: %v", got)
		}
	})

	t.Run("interrupted flush leaves the previous index intact", func(t *testing.T) {
		ref := newRepo(host)
		before := putFlush(t, openReg(t, ref, nil), "old")
		c := &counter{fail: func(r *http.Request) bool {
			return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/manifests/")
		}}
		w := openReg(t, ref, c)
		l, _ := newLayer(t)
		rec := record(t, "new", "s", l, time.Now())
		if err := w.Put(ctx, rec, l); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err == nil {
			t.Fatal("flush with a failing manifest PUT succeeded")
		}
		back := openReg(t, ref, nil)
		got, err := back.Get(ctx, before["old"].Key)
		if err != nil {
			t.Fatalf("old record lost: %v", err)
		}
		lay, err := back.Layer(ctx, got)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, lay.Compressed)
		if _, err := back.Get(ctx, rec.Key); !errors.Is(err, ErrNotFound) {
			t.Errorf("record of the failed flush is visible: err = %v", err)
		}
		// The staged record survives the failure: a retry publishes it.
		c.mu.Lock()
		c.fail = nil
		c.mu.Unlock()
		if err := w.Flush(ctx); err != nil {
			t.Fatalf("retried flush: %v", err)
		}
		if _, err := openReg(t, ref, nil).Get(ctx, rec.Key); err != nil {
			t.Errorf("after retry: %v", err)
		}
	})

	t.Run("blobs already in the repository are not uploaded", func(t *testing.T) {
		ref := newRepo(host)
		r, err := registry.Options{}.Reference(ref)
		if err != nil {
			t.Fatal(err)
		}
		l, _ := newLayer(t)
		// The blob is in the repository (pushed by an image, say) but in
		// no cache index.
		if err := remote.WriteLayer(r.Context(), l); err != nil {
			t.Fatal(err)
		}
		c := &counter{}
		w := openReg(t, ref, c)
		if err := w.Put(ctx, record(t, "present", "s", l, time.Now()), l); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if got := c.snapshot(); got.uploadStarts != 1 || got.manifestPUTs != 1 {
			t.Errorf("uploads started %d (want 1: the index), manifest PUTs %d (want 1)", got.uploadStarts, got.manifestPUTs)
		}
	})

	t.Run("re-putting what the index holds sends nothing until it is an hour stale", func(t *testing.T) {
		// A no-change build re-Puts every record it hit; rewriting the
		// index for that alone cost every such build a write and a settle.
		ref := newRepo(host)
		l, _ := newLayer(t)
		start := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
		now := start
		clock := func() time.Time { return now }
		first := openReg(t, ref, nil)
		first.SetBounds(Bounds{Now: clock})
		rec := record(t, "hit", "s", l, start)
		if err := first.Put(ctx, rec, l); err != nil {
			t.Fatal(err)
		}
		if err := first.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// The cases run in order on one ref: each sees what the one
		// before left.
		for _, tc := range []struct {
			after     time.Duration
			step      string
			wantPUTs  int
			situation string
		}{
			{10 * time.Minute, "s", 0, "used 10 minutes ago"},
			{10 * time.Minute, "renamed step", 1, "same key under another step ID"},
			{2 * time.Hour, "renamed step", 1, "used 2 hours ago"},
		} {
			now = start.Add(tc.after)
			c := &counter{}
			w := openReg(t, ref, c)
			w.SetBounds(Bounds{Now: clock})
			again := rec
			again.StepID = tc.step
			if err := w.Put(ctx, again, l); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if got := c.snapshot(); got.manifestPUTs != tc.wantPUTs || got.uploadStarts > tc.wantPUTs {
				t.Errorf("%s: manifest PUTs %d, uploads %d (want %d)", tc.situation, got.manifestPUTs, got.uploadStarts, tc.wantPUTs)
			}
			if _, err := openReg(t, ref, nil).Get(ctx, rec.Key); err != nil {
				t.Errorf("%s: record lost: %v", tc.situation, err)
			}
		}
	})

	t.Run("a layer from another repository is mounted", func(t *testing.T) {
		srcRef, dstRef := newRepo(host), newRepo(host)
		recs := putFlush(t, openReg(t, srcRef, nil), "shared")
		src := openReg(t, srcRef, nil)
		hit, err := src.Get(ctx, recs["shared"].Key)
		if err != nil {
			t.Fatal(err)
		}
		lay, err := src.Layer(ctx, hit)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := lay.(*remote.MountableLayer); !ok {
			t.Fatalf("Layer returned %T, want *remote.MountableLayer", lay)
		}
		c := &counter{}
		dst := openReg(t, dstRef, c)
		c.reset()
		if err := dst.Put(ctx, hit, lay); err != nil {
			t.Fatal(err)
		}
		if err := dst.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		got := c.snapshot()
		// Flush reads the index back (its config blob), never the layer.
		fetchedLayer := slices.Contains(got.fetched, hit.Layer.Digest.String())
		if got.mounted != 1 || fetchedLayer || got.uploadStarts != 1 {
			t.Errorf("mounted %d (want 1), layer fetched %v (want false), uploads started %d (want 1: the index)", got.mounted, fetchedLayer, got.uploadStarts)
		}
		back := openReg(t, dstRef, nil)
		rec, err := back.Get(ctx, hit.Key)
		if err != nil {
			t.Fatal(err)
		}
		lay2, err := back.Layer(ctx, rec)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, lay2.Compressed)
	})

	t.Run("inline cache in an image is read", func(t *testing.T) {
		ref := newRepo(host)
		l0, _ := newLayer(t)
		l1, _ := newLayer(t)
		created := time.Date(2025, 5, 5, 5, 5, 5, 0, time.UTC)
		layerTime := time.Date(2025, 4, 4, 4, 4, 4, 0, time.UTC)
		pushInlineImage(t, ref, []v1.Layer{l0, l1}, created, layerTime, map[string]any{
			"version": 1,
			"layers": []map[string]any{
				{"key": testKey("base").String(), "index": 0},
				{"key": testKey("run").String(), "index": 1},
				{"key": testKey("bad").String(), "index": 7},
			},
		})
		r := openReg(t, ref, nil)
		if !r.ReadOnly() {
			t.Error("an image's inline cache is writable")
		}
		got, err := r.Get(ctx, testKey("run"))
		if err != nil {
			t.Fatal(err)
		}
		want, err := describe(l1)
		if err != nil {
			t.Fatal(err)
		}
		if got.Layer != want {
			t.Errorf("layer = %+v, want %+v", got.Layer, want)
		}
		if !got.Created.Equal(layerTime) {
			t.Errorf("created = %v, want the history entry's %v", got.Created, layerTime)
		}
		if _, err := r.Get(ctx, testKey("bad")); !errors.Is(err, ErrNotFound) {
			t.Errorf("an entry with an out-of-range index: err = %v, want ErrNotFound", err)
		}
		if err := r.Put(ctx, record(t, "x", "s", l0, created), l0); !errors.Is(err, ErrReadOnly) {
			t.Errorf("Put into an image: err = %v, want ErrReadOnly", err)
		}
		lay, err := r.Layer(ctx, got)
		if err != nil {
			t.Fatal(err)
		}
		mustEqualBytes(t, "inline layer", readAll(t, lay.Compressed), readAll(t, l1.Compressed))
	})

	t.Run("an image without inline cache is an empty cache", func(t *testing.T) {
		ref := newRepo(host)
		l0, _ := newLayer(t)
		pushInlineImage(t, ref, []v1.Layer{l0}, time.Now(), time.Now(), nil)
		r := openReg(t, ref, nil)
		if _, err := r.Get(ctx, testKey("base")); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get: err = %v, want ErrNotFound", err)
		}
	})

	t.Run("a flush with nothing put sends nothing", func(t *testing.T) {
		ref := newRepo(host)
		putFlush(t, openReg(t, ref, nil), "x")
		c := &counter{}
		w := openReg(t, ref, c)
		c.reset()
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if got := c.snapshot(); !reflect.DeepEqual(got, counts{}) {
			t.Errorf("requests sent: %+v", got)
		}
	})

	t.Run("send uploads the staged blobs ahead of flush, which publishes them without sending them again", func(t *testing.T) {
		ref := newRepo(host)
		c := &counter{}
		w := openReg(t, ref, c)
		put := func(name string) Record {
			l, _ := newLayer(t)
			rec := record(t, name, "step "+name, l, time.Now())
			if err := w.Put(ctx, rec, l); err != nil {
				t.Fatal(err)
			}
			return rec
		}
		recs := []Record{put("a"), put("b")}
		if err := w.Send(ctx); err != nil {
			t.Fatal(err)
		}
		if got := c.snapshot(); got.uploadStarts != 2 || got.manifestPUTs != 0 {
			t.Errorf("send: %d uploads, %d manifest PUTs; want the 2 staged blobs and no manifest", got.uploadStarts, got.manifestPUTs)
		}
		if _, err := openReg(t, ref, nil).Get(ctx, recs[0].Key); !errors.Is(err, ErrNotFound) {
			t.Errorf("a record is visible after send, before flush: err = %v", err)
		}
		recs = append(recs, put("c"))
		c.reset()
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// The blob put after send, and the index; the sent ones not even
		// asked about.
		if got := c.snapshot(); got.uploadStarts != 2 || got.blobHEADs != 2 {
			t.Errorf("flush after send: %d uploads, %d blob HEADs; want 2 of each (the later blob and the index)", got.uploadStarts, got.blobHEADs)
		}
		back := openReg(t, ref, nil)
		for _, want := range recs {
			got, err := back.Get(ctx, want.Key)
			if err != nil {
				t.Fatalf("%s lost: %v", want.Key, err)
			}
			l, err := back.Layer(ctx, got)
			if err != nil {
				t.Fatal(err)
			}
			readAll(t, l.Compressed)
		}
	})

	t.Run("a failed send leaves the blobs to flush", func(t *testing.T) {
		ref := newRepo(host)
		c := &counter{}
		w := openReg(t, ref, c)
		l, _ := newLayer(t)
		rec := record(t, "a", "step a", l, time.Now())
		if err := w.Put(ctx, rec, l); err != nil {
			t.Fatal(err)
		}
		c.mu.Lock()
		c.fail = func(r *http.Request) bool { return strings.Contains(r.URL.Path, "/blobs/uploads/") }
		c.mu.Unlock()
		if err := w.Send(ctx); err == nil {
			t.Fatal("send succeeded with every upload failing")
		}
		c.mu.Lock()
		c.fail = nil
		c.mu.Unlock()
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		got, err := openReg(t, ref, nil).Get(ctx, rec.Key)
		if err != nil {
			t.Fatal(err)
		}
		back, err := openReg(t, ref, nil).Layer(ctx, got)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, back.Compressed)
	})

	t.Run("concurrent puts, gets and a flush", func(t *testing.T) {
		ref := newRepo(host)
		w := openReg(t, ref, nil)
		old := putFlush(t, w, "before")
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l, _ := newLayer(t)
				if err := w.Put(ctx, record(t, fmt.Sprint("c", i), "step", l, time.Now()), l); err != nil {
					errs <- err
				}
				if _, err := w.Get(ctx, old["before"].Key); err != nil {
					errs <- err
				}
				if i == 3 {
					if err := w.Flush(ctx); err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if err := w.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if n := len(keysOf(t, openReg(t, ref, nil))); n != 9 {
			t.Errorf("%d records after concurrent puts, want 9", n)
		}
	})

	t.Run("an index of a newer format is refused", func(t *testing.T) {
		ref := newRepo(host)
		pushRaw(t, ref, []byte(`{"version":99,"records":[]}`), IndexMediaType, nil)
		_, err := OpenRegistry(ctx, ref, registry.Options{})
		if !errors.Is(err, ErrUnsupportedFormat) {
			t.Errorf("err = %v, want ErrUnsupportedFormat", err)
		}
	})
}

func TestRegistryUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = OpenRegistry(ctx, addr+"/cache:x", registry.Options{})
	if !errors.Is(err, registry.ErrUnreachable) {
		t.Errorf("err = %v, want registry.ErrUnreachable", err)
	}
}

// manifestOf reads the manifest at ref.
func manifestOf(t testing.TB, ref string) *v1.Manifest {
	t.Helper()
	img, err := registry.Image(context.Background(), ref, v1.Platform{}, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// pushInlineImage pushes an image of layers whose config carries inline
// (the kiln.cache.v1 field) unless it is nil.
func pushInlineImage(t testing.TB, ref string, layers []v1.Layer, created, layerTime time.Time, inline map[string]any) {
	t.Helper()
	cfg := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"created":      created,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{}},
	}
	var diffIDs []string
	var history []map[string]any
	for _, l := range layers {
		d, err := l.DiffID()
		if err != nil {
			t.Fatal(err)
		}
		diffIDs = append(diffIDs, d.String())
		history = append(history, map[string]any{"created": layerTime, "created_by": "RUN x"})
	}
	history = append(history, map[string]any{"created": created, "created_by": "ENV A=1", "empty_layer": true})
	cfg["rootfs"] = map[string]any{"type": "layers", "diff_ids": diffIDs}
	cfg["history"] = history
	if inline != nil {
		cfg[InlineField] = inline
	}
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pushRaw(t, ref, raw, types.OCIConfigJSON, layers)
}

// pushRaw pushes a manifest with the given config blob and layers.
func pushRaw(t testing.TB, ref string, config []byte, configType types.MediaType, layers []v1.Layer) {
	t.Helper()
	r, err := registry.Options{}.Reference(ref)
	if err != nil {
		t.Fatal(err)
	}
	cl := static.NewLayer(config, configType)
	if err := remote.WriteLayer(r.Context(), cl); err != nil {
		t.Fatal(err)
	}
	cd, _ := cl.Digest()
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: configType, Digest: cd, Size: int64(len(config))},
		Layers:        []v1.Descriptor{},
	}
	for _, l := range layers {
		if err := remote.WriteLayer(r.Context(), l); err != nil {
			t.Fatal(err)
		}
		d, err := describe(l)
		if err != nil {
			t.Fatal(err)
		}
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size})
	}
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Put(r, rawTaggable{raw: raw, mt: types.OCIManifestSchema1}); err != nil {
		t.Fatal(err)
	}
}
