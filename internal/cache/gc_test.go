package cache

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/gc"
)

// The cache as a gc source: a blob shared by two records is one item,
// freed with both records; a blob a running build's Put pinned survives
// the sweep even before its record exists; a record replaced by a newer
// result of its step makes its layer superseded.
func TestLocalGC(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	l := openLocal(t, filepath.Join(root, "cache"))
	shared, _ := newLayer(t)
	other, _ := newLayer(t)
	old := time.Now().Add(-time.Hour)
	recs := []Record{
		record(t, "a", "step-a", shared, old),
		record(t, "b", "step-b", shared, old),
		record(t, "c", "step-a", other, old), // a newer result of step-a
	}
	for i, r := range recs {
		lay := shared
		if i == 2 {
			lay = other
		}
		if err := l.Put(ctx, r, lay); err != nil {
			t.Fatal(err)
		}
	}
	items, err := l.GC().Items(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 {
		t.Fatalf("%d items, want 2 (one per blob)", len(items))
	}

	sup, err := l.Superseded(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(sup) != 0 {
		// record b (step-b) still names the shared blob's layer.
		t.Errorf("superseded %v, want none: the shared layer is b's current result", sup)
	}

	// A blob written by a Put that has not written its record yet.
	build := filepath.Join(root, "run", "b1")
	if err := os.MkdirAll(build, 0o755); err != nil {
		t.Fatal(err)
	}
	lease, err := gc.NewLease(root, build)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close()
	inflight, _ := newLayer(t)
	d, _ := inflight.Digest()
	if err := lease.Pin(ctx, BlobPin(d)); err != nil {
		t.Fatal(err)
	}
	rc, _ := inflight.Compressed()
	b := make([]byte, 1<<16)
	n, _ := rc.Read(b)
	rc.Close()
	if err := os.WriteFile(filepath.Join(l.BlobDir(), d.Hex), b[:n], 0o644); err != nil {
		t.Fatal(err)
	}
	orphan := v1.Hash{Algorithm: "sha256", Hex: "00000000000000000000000000000000000000000000000000000000000000ff"}
	if err := os.WriteFile(filepath.Join(l.BlobDir(), orphan.Hex), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}

	res, err := gc.Collect(ctx, root, []gc.Source{l.GC()}, gc.Policy{All: true}, time.Now(),
		func() ([]string, error) { return []string{build}, nil })
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 2 {
		t.Errorf("removed %d items, want 2", res.Removed)
	}
	left := dirEntries(t, l.BlobDir())
	if len(left) != 1 || left[0] != d.Hex {
		t.Errorf("blobs left %v, want only the pinned in-flight one", left)
	}
	if rs := dirEntries(t, filepath.Join(l.Dir(), "records", "sha256")); len(rs) != 0 {
		t.Errorf("records left %v", rs)
	}
	if ss := dirEntries(t, filepath.Join(l.Dir(), "steps")); len(ss) != 0 {
		t.Errorf("step index entries left %v", ss)
	}
}
