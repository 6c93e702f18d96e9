package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/gc"
)

func openLocalHarness(t *testing.T) (Writer, func() Store, *counter) {
	dir := t.TempDir()
	w := openLocal(t, dir)
	return w, func() Store { return openLocal(t, dir) }, nil
}

func openLocal(t testing.TB, dir string) *Local {
	t.Helper()
	l, err := OpenLocal(dir)
	if err != nil {
		t.Fatalf("OpenLocal(%s): %v", dir, err)
	}
	return l
}

// fakeClock is a settable clock for LastUsed and Prune.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }

func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

func TestLocalFormat(t *testing.T) {
	dir := t.TempDir()
	l := openLocal(t, dir)
	lay, _ := newLayer(t)
	rec := record(t, "f", "stage0 RUN x", lay, time.Now())
	if err := l.Put(context.Background(), rec, lay); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{
		"kiln-cache.json",
		filepath.Join("blobs", "sha256", rec.Layer.Digest.Hex),
		filepath.Join("records", "sha256", rec.Key.Encoded()+".json"),
	} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("documented file %s missing: %v", p, err)
		}
	}
	if n := len(dirEntries(t, filepath.Join(dir, "steps"))); n != 1 {
		t.Errorf("steps/ has %d entries, want 1", n)
	}
	if n := len(dirEntries(t, filepath.Join(dir, "tmp"))); n != 0 {
		t.Errorf("tmp/ has %d leftovers after a put", n)
	}

	if err := os.WriteFile(filepath.Join(dir, "kiln-cache.json"), []byte(`{"format":"kiln-cache","version":2}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLocal(dir); !errors.Is(err, ErrUnsupportedFormat) {
		t.Errorf("opening a version 2 cache: err = %v, want ErrUnsupportedFormat", err)
	}
}

func TestLocalGetRefreshesLastUsed(t *testing.T) {
	ctx := context.Background()
	l := openLocal(t, t.TempDir())
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	l.now = clock.now
	lay, _ := newLayer(t)
	rec := record(t, "g", "s", lay, clock.now())
	if err := l.Put(ctx, rec, lay); err != nil {
		t.Fatal(err)
	}
	later := clock.now().Add(5 * time.Hour)
	clock.set(later)
	got, err := l.Get(ctx, rec.Key)
	if err != nil {
		t.Fatal(err)
	}
	if !got.LastUsed.Equal(later) {
		t.Errorf("LastUsed after a hit = %v, want %v", got.LastUsed, later)
	}
	if !got.Created.Equal(rec.Created) {
		t.Errorf("a hit changed Created to %v", got.Created)
	}
}

// A read-only store (a dry run's) answers lookups and changes nothing.
func TestLocalReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := openLocal(t, dir)
	lay, _ := newLayer(t)
	rec := record(t, "g", "s", lay, time.Now())
	if err := l.Put(ctx, rec, lay); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := os.Chtimes(l.recordPath(rec.Key), old, old); err != nil {
		t.Fatal(err)
	}
	ro := openLocal(t, dir)
	ro.SetReadOnly()
	got, err := ro.Get(ctx, rec.Key)
	if err != nil {
		t.Fatal(err)
	}
	if !got.LastUsed.Equal(old) {
		t.Errorf("a read-only hit reports LastUsed %v, want %v", got.LastUsed, old)
	}
	if fi, err := os.Stat(l.recordPath(rec.Key)); err != nil || !fi.ModTime().Equal(old) {
		t.Errorf("a read-only hit touched the record (%v, %v)", fi.ModTime(), err)
	}
	lay2, _ := newLayer(t)
	if err := ro.Put(ctx, record(t, "h", "s", lay2, time.Now()), lay2); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Put on a read-only store: %v, want ErrReadOnly", err)
	}
}

func TestLocalConcurrentWriters(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	layers := make([]v1.Layer, 4)
	for i := range layers {
		layers[i], _ = newLayer(t)
	}
	// Eight writers, each its own Local (as separate processes would
	// have), putting overlapping records that share blobs.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := OpenLocal(dir)
			if err != nil {
				errs <- err
				return
			}
			for i := range 12 {
				lay := layers[(w+i)%len(layers)]
				rec := record(t, fmt.Sprint("k", i), "step", lay, time.Now())
				rec.Key = testKey(fmt.Sprint("k", i, "-", (w+i)%len(layers)))
				if err := l.Put(ctx, rec, lay); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkConsistent(t, dir)
}

// checkConsistent asserts every record's layer reads back verified and no
// temporary file is left.
func checkConsistent(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	l := openLocal(t, dir)
	keys, err := l.keys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := l.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(keys) || len(keys) == 0 {
		t.Fatalf("%d record files, %d complete entries", len(keys), len(entries))
	}
	for _, e := range entries {
		lay, err := l.Layer(ctx, e.Record)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, lay.Compressed)
		readAll(t, lay.Uncompressed)
	}
	if n := len(dirEntries(t, filepath.Join(dir, "tmp"))); n != 0 {
		t.Errorf("tmp/ has %d leftovers", n)
	}
	if _, err := l.Previous(ctx, "step"); err != nil {
		t.Errorf("Previous after concurrent puts: %v", err)
	}
}

// TestLocalHelperProcess is run by TestLocalConcurrentProcesses in child
// processes; on its own it does nothing.
func TestLocalHelperProcess(t *testing.T) {
	dir := os.Getenv("KILN_CACHE_HELPER_DIR")
	if dir == "" {
		return // only meaningful as a child of TestLocalConcurrentProcesses
	}
	seed, _ := strconv.Atoi(os.Getenv("KILN_CACHE_HELPER_SEED"))
	l := openLocal(t, dir)
	for i := range 10 {
		lay, _ := newLayer(t)
		rec := record(t, fmt.Sprint("p", seed, "-", i), "step", lay, time.Now())
		if err := l.Put(context.Background(), rec, lay); err != nil {
			t.Fatal(err)
		}
		// Everyone also writes one shared key, racing on the same files.
		rec.Key = testKey("shared")
		if err := l.Put(context.Background(), rec, lay); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLocalConcurrentProcesses(t *testing.T) {
	dir := t.TempDir()
	openLocal(t, dir)
	var cmds []*exec.Cmd
	for i := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLocalHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), "KILN_CACHE_HELPER_DIR="+dir, "KILN_CACHE_HELPER_SEED="+strconv.Itoa(i))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("helper process: %v", err)
		}
	}
	checkConsistent(t, dir)
	if n := len(dirEntries(t, filepath.Join(dir, "records", "sha256"))); n != 31 {
		t.Errorf("%d records, want 31 (3×10 own + 1 shared)", n)
	}
}

func TestLocalCrashLeavesNothingObservable(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		crash func(t *testing.T, l *Local, rec Record, lay v1.Layer)
	}{
		{"blob temp file left behind", func(t *testing.T, l *Local, rec Record, lay v1.Layer) {
			b := readAll(t, lay.Compressed)
			if err := os.WriteFile(filepath.Join(l.dir, "tmp", "w-123"), b[:len(b)/2], 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"record written without its blob", func(t *testing.T, l *Local, rec Record, lay v1.Layer) {
			rec.LastUsed = time.Now()
			if err := l.putRecord(rec); err != nil {
				t.Fatal(err)
			}
		}},
		{"blob truncated under its final name", func(t *testing.T, l *Local, rec Record, lay v1.Layer) {
			if err := l.Put(ctx, rec, lay); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(l.blobPath(rec.Layer.Digest), 10); err != nil {
				t.Fatal(err)
			}
		}},
		{"layer stream broken during put", func(t *testing.T, l *Local, rec Record, lay v1.Layer) {
			if err := l.Put(ctx, rec, failingLayer{Layer: lay, after: 100}); err == nil {
				t.Fatal("put of a broken stream succeeded")
			}
		}},
		{"context cancelled during put", func(t *testing.T, l *Local, rec Record, lay v1.Layer) {
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			if err := l.Put(cctx, rec, lay); err == nil {
				t.Fatal("put with a cancelled context succeeded")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			l := openLocal(t, dir)
			lay, _ := newLayer(t)
			rec := record(t, "crash", "s", lay, time.Now())
			tt.crash(t, l, rec, lay)

			if _, err := l.Get(ctx, rec.Key); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get: err = %v, want ErrNotFound", err)
			}
			if _, err := l.Previous(ctx, "s"); err == nil {
				t.Error("Previous found the broken record")
			}
			if es, err := l.List(ctx); err != nil || len(es) != 0 {
				t.Errorf("List = %d entries, %v; want none", len(es), err)
			}
			// A collection with nothing to evict sweeps the leftovers.
			collect(t, l, gc.Policy{}, time.Now())
			for _, sub := range []string{"tmp", "blobs/sha256", "records/sha256", "steps"} {
				if left := dirEntries(t, filepath.Join(dir, sub)); len(left) != 0 {
					t.Errorf("after prune %s/ still has %v", sub, left)
				}
			}
			// The cache works again for the same key.
			if err := l.Put(ctx, rec, lay); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Get(ctx, rec.Key); err != nil {
				t.Errorf("Get after a clean put: %v", err)
			}
		})
	}
}

func TestLocalListAndPrune(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
	// Five records used one day apart (r0 oldest); r3 and r4 share a blob.
	setup := func(t *testing.T) (*Local, *fakeClock, []Record) {
		l := openLocal(t, t.TempDir())
		clock := &fakeClock{t: t0}
		l.now = clock.now
		var recs []Record
		var blob v1.Layer
		for i := range 5 {
			lay, _ := newLayer(t)
			if i == 4 {
				lay = blob
			}
			blob = lay
			clock.set(t0.Add(time.Duration(i) * 24 * time.Hour))
			rec := record(t, fmt.Sprint("r", i), fmt.Sprint("step", i), lay, clock.now())
			if err := l.Put(ctx, rec, lay); err != nil {
				t.Fatal(err)
			}
			recs = append(recs, rec)
		}
		clock.set(t0.Add(5 * 24 * time.Hour))
		return l, clock, recs
	}

	t.Run("list is newest use first", func(t *testing.T) {
		l, _, recs := setup(t)
		es, err := l.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(es) != 5 {
			t.Fatalf("%d entries, want 5", len(es))
		}
		for i, e := range es {
			if want := recs[4-i].Key; e.Record.Key != want {
				t.Errorf("entry %d is %s, want %s", i, e.Record.Key, want)
			}
			if e.Size != e.Record.Layer.Size || e.Size == 0 {
				t.Errorf("entry %d size %d", i, e.Size)
			}
		}
	})

	tests := []struct {
		name     string
		policy   func(l *Local) gc.Policy
		wantKept []int
	}{
		{"no limits keep everything", func(*Local) gc.Policy { return gc.Policy{} }, []int{0, 1, 2, 3, 4}},
		{"until drops records unused for longer", func(*Local) gc.Policy { return gc.Policy{Until: 60 * time.Hour} }, []int{3, 4}},
		// Just over the bound: the least recently used blob goes first.
		{"max size drops least recently used", func(l *Local) gc.Policy { return gc.Policy{MaxSize: usage(t, l) - 1} }, []int{1, 2, 3, 4}},
		// r3 and r4 share a blob, one item used when r4 was: it goes last,
		// with both records.
		{"a shared blob is freed with its last record", func(*Local) gc.Policy { return gc.Policy{MaxSize: 1} }, nil},
		{"all", func(*Local) gc.Policy { return gc.Policy{All: true} }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, clock, recs := setup(t)
			collect(t, l, tt.policy(l), clock.now())
			kept := map[digest.Digest]bool{}
			for _, i := range tt.wantKept {
				kept[recs[i].Key] = true
			}
			for i, r := range recs {
				_, err := l.Get(ctx, r.Key)
				if kept[r.Key] && err != nil {
					t.Errorf("r%d pruned: %v", i, err)
				}
				if !kept[r.Key] && err == nil {
					t.Errorf("r%d kept", i)
				}
			}
			blobs := dirEntries(t, filepath.Join(l.dir, "blobs", "sha256"))
			want := map[string]bool{}
			for _, i := range tt.wantKept {
				want[recs[i].Layer.Digest.Hex] = true
			}
			if len(blobs) != len(want) {
				t.Errorf("%d blobs left, want %d", len(blobs), len(want))
			}
			steps := dirEntries(t, filepath.Join(l.dir, "steps"))
			if len(steps) != len(tt.wantKept) {
				t.Errorf("%d step index entries left, want %d", len(steps), len(tt.wantKept))
			}
		})
	}
}

// collect runs a collection over the cache alone, its directory as the
// root, with no build running.
func collect(t *testing.T, l *Local, p gc.Policy, now time.Time) gc.Result {
	t.Helper()
	res, err := gc.Collect(context.Background(), l.dir, []gc.Source{l.GC()}, p, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func usage(t *testing.T, l *Local) int64 {
	t.Helper()
	u, err := gc.Measure(context.Background(), l.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return u.Total
}

func TestLocalExport(t *testing.T) {
	ctx := context.Background()
	src := openLocal(t, t.TempDir())
	dstDir := t.TempDir()
	dst := openLocal(t, dstDir)
	var recs []Record
	var bytes [][]byte
	for i := range 3 {
		lay, b := newLayer(t)
		rec := record(t, fmt.Sprint("e", i), fmt.Sprint("step", i), lay, time.Date(2025, 1, i+1, 0, 0, 0, 0, time.UTC))
		if err := src.Put(ctx, rec, lay); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
		bytes = append(bytes, b)
	}
	if err := src.Export(ctx, dst, []digest.Digest{recs[0].Key, recs[2].Key}); err != nil {
		t.Fatal(err)
	}
	back := openLocal(t, dstDir)
	for i, want := range []bool{true, false, true} {
		got, err := back.Get(ctx, recs[i].Key)
		if !want {
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("e%d was exported though not asked for: %v", i, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("e%d: %v", i, err)
		}
		if err := sameRecord(got, recs[i]); err != nil {
			t.Error(err)
		}
		lay, err := back.Layer(ctx, got)
		if err != nil {
			t.Fatal(err)
		}
		mustEqualBytes(t, "exported blob", readAll(t, lay.Compressed), bytes[i])
		a, _ := os.Stat(src.blobPath(got.Layer.Digest))
		b, _ := os.Stat(back.blobPath(got.Layer.Digest))
		if !os.SameFile(a, b) {
			t.Errorf("e%d blob was copied, want a hard link on the same filesystem", i)
		}
		if _, err := back.Previous(ctx, recs[i].StepID); err != nil {
			t.Errorf("e%d: Previous in the export: %v", i, err)
		}
	}

	// Missing keys are reported, the others still exported.
	err := src.Export(ctx, dst, []digest.Digest{testKey("absent"), recs[1].Key})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("export of an absent key: err = %v, want ErrNotFound", err)
	}
	if _, err := back.Get(ctx, recs[1].Key); err != nil {
		t.Errorf("e1 not exported alongside an absent key: %v", err)
	}
}

func TestLocalExportCopiesAcrossFilesystems(t *testing.T) {
	ctx := context.Background()
	// /dev/shm is a tmpfs on Linux: another filesystem than the test's
	// temporary directory, so the hard link fails with EXDEV.
	shm, err := os.MkdirTemp("/dev/shm", "kiln-cache-test-")
	if err != nil {
		t.Skipf("no /dev/shm to export across filesystems: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	src := openLocal(t, t.TempDir())
	var a, b unix.Stat_t
	if unix.Stat(src.dir, &a) != nil || unix.Stat(shm, &b) != nil || a.Dev == b.Dev {
		t.Skip("/dev/shm is on the same filesystem as the temporary directory")
	}
	dst := openLocal(t, shm)
	lay, want := newLayer(t)
	rec := record(t, "x", "s", lay, time.Now())
	if err := src.Put(ctx, rec, lay); err != nil {
		t.Fatal(err)
	}
	if err := src.Export(ctx, dst, []digest.Digest{rec.Key}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst.blobPath(rec.Layer.Digest))
	if err != nil {
		t.Fatal(err)
	}
	mustEqualBytes(t, "copied blob", got, want)
	if _, err := dst.Get(ctx, rec.Key); err != nil {
		t.Error(err)
	}
}
