package gc

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func write(t *testing.T, p string, n int) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, make([]byte, n), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A file hard-linked from the image store into the cache counts once,
// under cache.
func TestMeasureCountsLinksOnce(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "cache", "blobs", "a"), 1<<20)
	if err := os.MkdirAll(filepath.Join(root, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(root, "cache", "blobs", "a"), filepath.Join(root, "images", "a")); err != nil {
		t.Fatal(err)
	}
	u, err := Measure(context.Background(), root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if u.Kinds[KindCache] < 1<<20 || u.Kinds[KindImages] >= 1<<20 {
		t.Errorf("linked file counted as %+v, want once under cache", u.Kinds)
	}
	if u.Total > 1<<20+64<<10 {
		t.Errorf("total %d, want about 1 MiB", u.Total)
	}
}

type fakeSource []Item

func (f fakeSource) Items(context.Context) ([]Item, error)                { return f, nil }
func (f fakeSource) Sweep(context.Context, *Freer, map[string]bool) error { return nil }

// Collect removes the least recently used first down to MaxSize, and
// never an item a live lease pinned; a closed lease pins nothing.
func TestCollectLRUAndPins(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	now := time.Now()
	var items fakeSource
	for i, name := range []string{"old", "pinned", "mid", "new"} {
		p := filepath.Join(root, "cache", name)
		write(t, p, 1<<20)
		items = append(items, Item{Kind: KindCache, Name: name, LastUsed: now.Add(time.Duration(i) * time.Minute),
			Pins: []string{"x:" + name}, Remove: func(f *Freer) error { return f.RemoveAll(p) }})
	}
	build := filepath.Join(root, "run", "b1")
	if err := os.MkdirAll(build, 0o755); err != nil {
		t.Fatal(err)
	}
	lease, err := NewLease(root, build)
	if err != nil {
		t.Fatal(err)
	}
	if err := lease.Pin(ctx, "x:pinned"); err != nil {
		t.Fatal(err)
	}
	running := func() ([]string, error) { return []string{build}, nil }
	res, err := Collect(ctx, root, []Source{items}, Policy{MaxSize: 2<<20 + 512<<10}, now, running)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"old": false, "pinned": true, "mid": false, "new": true} {
		_, err := os.Stat(filepath.Join(root, "cache", name))
		if got := err == nil; got != want {
			t.Errorf("%s kept=%v, want %v (result %+v)", name, got, want, res)
		}
	}
	if res.InUse != 1 || res.Removed != 2 {
		t.Errorf("result %+v, want 2 removed and 1 in use", res)
	}
	lease.Close()
	// The build ended: its directory is no longer live.
	if _, err := Collect(ctx, root, []Source{items}, Policy{All: true}, now, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cache", "pinned")); err == nil {
		t.Error("a finished build's pin still kept its item")
	}
}

// An immutable directory is walked once: its size is remembered by name
// and inode, and a directory recreated under the same name is walked
// again.
func TestMeasureRemembersImmutableDirs(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	layer := filepath.Join(root, "snapshots", "l", "abc")
	write(t, filepath.Join(layer, "f"), 1<<20)
	imm := func(p string) bool { return filepath.Dir(p) == filepath.Join(root, "snapshots", "l") }
	first, err := Measure(ctx, root, imm)
	if err != nil {
		t.Fatal(err)
	}
	// Behind the cache's back (an immutable dir never changes; this
	// shows the walk was skipped).
	write(t, filepath.Join(layer, "g"), 1<<20)
	again, err := Measure(ctx, root, imm)
	if err != nil {
		t.Fatal(err)
	}
	if again.Kinds[KindSnapshots] != first.Kinds[KindSnapshots] {
		t.Errorf("immutable dir walked again: %d then %d", first.Kinds[KindSnapshots], again.Kinds[KindSnapshots])
	}
	// Replaced (removed and extracted again): a new inode, a new walk.
	if err := os.Rename(layer, layer+".old"); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(layer, "h"), 2<<20)
	if err := os.RemoveAll(layer + ".old"); err != nil {
		t.Fatal(err)
	}
	third, err := Measure(ctx, root, imm)
	if err != nil {
		t.Fatal(err)
	}
	if third.Kinds[KindSnapshots] < 2<<20 {
		t.Errorf("recreated dir not walked: %d bytes", third.Kinds[KindSnapshots])
	}
	if real, _ := Measure(ctx, root, nil); real.Total != third.Total {
		t.Errorf("remembered total %d, walked total %d", third.Total, real.Total)
	}
}

// Removing an item whose bytes another link holds frees nothing: for
// size it goes last, so a cache record is not lost while an image still
// holds its blob and other items can free the space.
func TestCollectDefersItemsThatFreeNothing(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	now := time.Now()
	a, c := filepath.Join(root, "cache", "a"), filepath.Join(root, "cache", "c")
	write(t, a, 1<<20)
	write(t, c, 1<<20)
	if err := os.MkdirAll(filepath.Join(root, "images"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(a, filepath.Join(root, "images", "a")); err != nil {
		t.Fatal(err)
	}
	items := fakeSource{
		{Kind: KindCache, Name: "a", LastUsed: now.Add(-time.Hour), Frees: func() bool { return SoleLink(a) },
			Remove: func(f *Freer) error { return f.RemoveAll(a) }},
		{Kind: KindCache, Name: "c", LastUsed: now, Remove: func(f *Freer) error { return f.RemoveAll(c) }},
	}
	u, err := Measure(ctx, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Collect(ctx, root, []Source{items}, Policy{MaxSize: u.Total - 512<<10}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a); err != nil {
		t.Errorf("the item whose bytes the image holds was removed (result %+v)", res)
	}
	if _, err := os.Stat(c); err == nil {
		t.Errorf("the item that frees space was kept (result %+v)", res)
	}
}
