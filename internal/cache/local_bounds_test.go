package cache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// boundedDir puts, one minute apart on a fake clock, a mount unit (packs
// p1, p2 put first, then manifest m requiring them) among step records
// s1..s3, s1 the oldest and s3 the newest: p1 p2 m s1 s2 s3 at minutes
// 0..5 (m at 2). Each record has its own blob, except s2, which shares
// s1's.
func boundedDir(t *testing.T) (string, *Local, *fakeClock, map[string]v1.Hash) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	l := openLocal(t, dir)
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	clock := &fakeClock{t: start}
	l.now = clock.now
	blobs := map[string]v1.Hash{}
	shared, _ := newLayer(t)
	for i, name := range []string{"p1", "p2", "m", "s1", "s2", "s3"} {
		clock.set(start.Add(time.Duration(i) * time.Minute))
		lay, _ := newLayer(t)
		if name == "s1" || name == "s2" {
			lay = shared
		}
		rec := record(t, name, "step "+name, lay, clock.now())
		if name == "m" {
			rec.Inputs = map[string]string{RequiresInput: testKey("p1").String() + " " + testKey("p2").String()}
		}
		if err := l.Put(ctx, rec, lay); err != nil {
			t.Fatal(err)
		}
		blobs[name] = rec.Layer.Digest
	}
	return dir, l, clock, blobs
}

// present names the records a fresh Local over dir hits.
func present(t *testing.T, dir string) []string {
	t.Helper()
	l := openLocal(t, dir)
	var out []string
	for _, n := range []string{"p1", "p2", "m", "s1", "s2", "s3"} {
		if _, err := l.Get(context.Background(), testKey(n)); err == nil {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

func blobNames(t *testing.T, dir string, blobs map[string]v1.Hash) []string {
	t.Helper()
	var out []string
	for n, d := range blobs {
		if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", d.Hex)); err == nil {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// A local directory's max-entries and max-age mean what a registry's do:
// the newest units kept, a mount manifest with its packs counted and kept
// whole by the manifest's use, and the blobs of what was dropped deleted
// unless a kept record still names them.
func TestLocalFlushAppliesBounds(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		bounds    Bounds
		want      []string
		wantBlobs []string
	}{
		{"no bounds", Bounds{}, []string{"m", "p1", "p2", "s1", "s2", "s3"}, []string{"m", "p1", "p2", "s1", "s2", "s3"}},
		{"max-entries keeps the newest", Bounds{MaxEntries: 2}, []string{"s2", "s3"}, []string{"s1", "s2", "s3"}},
		{"a mount unit counts three and is skipped whole for older ones", Bounds{MaxEntries: 5}, []string{"s1", "s2", "s3"}, []string{"s1", "s2", "s3"}},
		{"a mount unit fits", Bounds{MaxEntries: 6}, []string{"m", "p1", "p2", "s1", "s2", "s3"}, []string{"m", "p1", "p2", "s1", "s2", "s3"}},
		{"max-age drops old records and their blobs", Bounds{MaxAge: 140 * time.Second}, []string{"s2", "s3"}, []string{"s1", "s2", "s3"}},
		{"max-age keeps an old pack of a fresh manifest", Bounds{MaxAge: 220 * time.Second}, []string{"m", "p1", "p2", "s1", "s2", "s3"}, []string{"m", "p1", "p2", "s1", "s2", "s3"}},
		{"max-age removes everything", Bounds{MaxAge: time.Second}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir, l, clock, blobs := boundedDir(t)
			// Flush at 5m30s: s3 is 30 s old, m 3m30s, p1 5m30s.
			clock.set(clock.now().Add(30 * time.Second))
			ageBlobs(t, dir, clock.now().Add(-2*blobGrace))
			l.SetBounds(tc.bounds)
			if err := l.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if got := present(t, dir); !slices.Equal(got, tc.want) {
				t.Errorf("records after Flush: %v, want %v", got, tc.want)
			}
			if got := blobNames(t, dir, blobs); !slices.Equal(got, tc.wantBlobs) {
				t.Errorf("blobs after Flush: %v, want %v", got, tc.wantBlobs)
			}
			keys, _ := l.keys(ctx)
			if len(keys) != len(tc.want) {
				t.Errorf("%d record files left, want %d", len(keys), len(tc.want))
			}
			if n := len(dirEntries(t, filepath.Join(dir, "steps"))); n != len(tc.want) {
				t.Errorf("%d step index entries left, want %d", n, len(tc.want))
			}
		})
	}
}

// A record whose blob a crash or prune took is removed by a bounded
// Flush, and a blob no record names (a writer killed between blob and
// record) is removed too.
func TestLocalFlushRemovesBrokenLeftovers(t *testing.T) {
	ctx := context.Background()
	dir, l, _, blobs := boundedDir(t)
	if err := os.Remove(filepath.Join(dir, "blobs", "sha256", blobs["s3"].Hex)); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(dir, "blobs", "sha256", fmt.Sprintf("%064x", 7))
	if err := os.WriteFile(orphan, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	ageBlobs(t, dir, l.now().Add(-blobGrace-time.Second))
	l.SetBounds(Bounds{MaxEntries: 100})
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.recordPath(testKey("s3"))); !os.IsNotExist(err) {
		t.Errorf("record of a lost blob still there: %v", err)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("unnamed blob still there: %v", err)
	}
	if got, want := present(t, dir), []string{"m", "p1", "p2", "s1", "s2"}; !slices.Equal(got, want) {
		t.Errorf("records: %v, want %v", got, want)
	}
}

// Writers putting into a directory while others flush it under a tight
// max-entries never leave a record whose blob is gone, and every Put
// that returned is either kept whole or dropped whole.
func TestLocalFlushUnderConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	openLocal(t, dir)
	layers := make([]v1.Layer, 6)
	for i := range layers {
		layers[i], _ = newLayer(t)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 6 {
		wg.Go(func() {
			l, err := OpenLocal(dir)
			if err != nil {
				errs <- err
				return
			}
			l.SetBounds(Bounds{MaxEntries: 3})
			for i := range 20 {
				lay := layers[(w+i)%len(layers)]
				rec := record(t, fmt.Sprint("w", w, "-", i), fmt.Sprint("step ", w), lay, time.Now())
				if err := l.Put(ctx, rec, lay); err != nil {
					errs <- err
					return
				}
				if i%3 == 0 {
					if err := l.Flush(ctx); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	l := openLocal(t, dir)
	keys, err := l.keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		rec, err := l.readRecord(k)
		if err != nil {
			t.Fatalf("record %s without its blob: %v", k, err)
		}
		lay, err := l.Layer(ctx, rec)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, lay.Compressed)
	}
	// The blobs dropped records named linger for the grace; once past
	// it, the next Flush leaves only the kept records' blobs.
	ageBlobs(t, dir, time.Now().Add(-2*blobGrace))
	l.SetBounds(Bounds{MaxEntries: 3})
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if keys, _ := l.keys(ctx); len(keys) != 3 {
		t.Errorf("%d records after a last Flush, want 3", len(keys))
	}
	if n := len(dirEntries(t, filepath.Join(dir, "blobs", "sha256"))); n > 3 {
		t.Errorf("%d blobs for 3 records", n)
	}
}

// ageBlobs sets every blob's last use (its mtime) to at.
func ageBlobs(t *testing.T, dir string, at time.Time) {
	t.Helper()
	for _, n := range dirEntries(t, filepath.Join(dir, "blobs", "sha256")) {
		if err := os.Chtimes(filepath.Join(dir, "blobs", "sha256", n), at, at); err != nil {
			t.Fatal(err)
		}
	}
}

// A build that hit a record reads its layer later; another build's Flush
// dropping the record in between must not take the bytes from under it.
// The hit's blob lingers for the grace, unnamed blobs nobody used go at
// once, a kept record's blob stays however old, and the lingering blob
// goes with the first Flush after the grace.
func TestLocalFlushSparesAHitsBlob(t *testing.T) {
	ctx := context.Background()
	dir, l, clock, blobs := boundedDir(t)
	// Everything was written long ago: only what a hit touches is recent.
	ageBlobs(t, dir, clock.now().Add(-10*blobGrace))

	// Build A hits s1 through its own Local and takes the lazy layer.
	a := openLocal(t, dir)
	a.now = clock.now
	rec, err := a.Get(ctx, testKey("s1"))
	if err != nil {
		t.Fatal(err)
	}
	lay, err := a.Layer(ctx, rec)
	if err != nil {
		t.Fatal(err)
	}
	want := readAll(t, lay.Compressed)

	// Build B's Flush keeps only s3: s1 and s2 (which share s1's blob)
	// are no longer found, but A's read still gets every byte.
	clock.set(clock.now().Add(time.Minute))
	l.SetBounds(Bounds{MaxEntries: 1})
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := present(t, dir); !slices.Equal(got, []string{"s3"}) {
		t.Fatalf("records after Flush: %v, want [s3]", got)
	}
	if got := readAll(t, lay.Compressed); string(got) != string(want) {
		t.Fatalf("the hit's layer read %d bytes after the Flush, want its %d", len(got), len(want))
	}
	readAll(t, lay.Uncompressed)
	if got := blobNames(t, dir, blobs); !slices.Equal(got, []string{"s1", "s2", "s3"}) {
		t.Errorf("blobs after Flush: %v, want s1's (hit) and s3's (kept) only", got)
	}

	// Just inside the grace the bytes stay; just past it the next Flush
	// reclaims them, while s3's ten-grace-old blob stays named.
	clock.set(clock.now().Add(blobGrace - 2*time.Minute))
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := blobNames(t, dir, blobs); !slices.Equal(got, []string{"s1", "s2", "s3"}) {
		t.Errorf("blobs inside the grace: %v, want s1's still there", got)
	}
	clock.set(clock.now().Add(2 * time.Minute))
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := blobNames(t, dir, blobs); !slices.Equal(got, []string{"s3"}) {
		t.Errorf("blobs past the grace: %v, want only the kept record's", got)
	}
	if got := present(t, dir); !slices.Equal(got, []string{"s3"}) {
		t.Errorf("records past the grace: %v, want [s3]", got)
	}
}
