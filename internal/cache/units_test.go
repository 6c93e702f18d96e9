package cache

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/gc"
)

// unitRecords is a cache mount manifest m requiring packs p1 and p2, and
// three step records s1..s3. p1 was last put long ago (a reused pack is
// not re-put within refreshAfter), m just now.
func unitRecords(now time.Time) map[digest.Digest]Record {
	at := func(name string, ago time.Duration, requires ...string) Record {
		r := Record{Key: testKey(name), StepID: "step " + name, LastUsed: now.Add(-ago)}
		if len(requires) > 0 {
			ks := make([]string, len(requires))
			for i, n := range requires {
				ks[i] = testKey(n).String()
			}
			r.Inputs = map[string]string{RequiresInput: strings.Join(ks, " ")}
		}
		return r
	}
	out := map[digest.Digest]Record{}
	for _, r := range []Record{
		at("m", 0, "p1", "p2", "p1"),
		at("p1", 30*24*time.Hour),
		at("p2", time.Minute),
		at("s1", time.Second),
		at("s2", 2*time.Second),
		at("s3", 3*time.Second),
	} {
		out[r.Key] = r
	}
	return out
}

func keptNames(rs []Record) []string {
	names := map[digest.Digest]string{}
	for _, n := range []string{"m", "p1", "p2", "p3", "s1", "s2", "s3"} {
		names[testKey(n)] = n
	}
	var out []string
	for _, r := range rs {
		out = append(out, names[r.Key])
	}
	slices.Sort(out)
	return out
}

// A registry's bounds keep a mount manifest and the packs it requires as
// one unit: by the manifest's last use, never a pack's own, counted whole
// against max-entries, and dropped whole when it does not fit or names a
// pack the index lacks — never a manifest without its packs.
func TestKeepTreatsAManifestAndItsPacksAsOne(t *testing.T) {
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		wo   Bounds
		edit func(map[digest.Digest]Record)
		want []string
	}{
		{"no bounds", Bounds{}, nil, []string{"m", "p1", "p2", "s1", "s2", "s3"}},
		{"an old pack of a fresh manifest outlives max-age", Bounds{MaxAge: 24 * time.Hour}, nil, []string{"m", "p1", "p2", "s1", "s2", "s3"}},
		{"the unit fits", Bounds{MaxEntries: 4}, nil, []string{"m", "p1", "p2", "s1"}},
		{"the unit does not fit: dropped whole, older records fill", Bounds{MaxEntries: 2}, nil, []string{"s1", "s2"}},
		{"an old manifest takes its fresh packs with it", Bounds{MaxAge: time.Hour}, func(rs map[digest.Digest]Record) {
			m := rs[testKey("m")]
			m.LastUsed = now.Add(-2 * time.Hour)
			rs[m.Key] = m
		}, []string{"s1", "s2", "s3"}},
		{"a manifest naming a pack the index lacks is dropped", Bounds{}, func(rs map[digest.Digest]Record) {
			delete(rs, testKey("p2"))
		}, []string{"s1", "s2", "s3"}},
		{"a pack no manifest requires ages on its own", Bounds{MaxAge: 24 * time.Hour}, func(rs map[digest.Digest]Record) {
			delete(rs, testKey("m"))
		}, []string{"p2", "s1", "s2", "s3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := unitRecords(now)
			if tc.edit != nil {
				tc.edit(rs)
			}
			tc.wo.Now = func() time.Time { return now }
			if got := keptNames(keep(rs, tc.wo, now)); !slices.Equal(got, tc.want) {
				t.Errorf("kept %v, want %v", got, tc.want)
			}
		})
	}
}

// In a local cache, the size bound evicts a mount manifest and its packs
// together: a pack last put long ago is as recent as the manifest that
// requires it, so a bound that reaches the old step record first takes
// that, and one that reaches the unit takes the manifest and every pack.
func TestLocalGCKeepsAManifestAndItsPacksTogether(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	l := openLocal(t, filepath.Join(root, "cache"))
	now := time.Now()
	put := func(name string, ago time.Duration, requires ...string) Record {
		t.Helper()
		lay, _ := newLayer(t)
		r := record(t, name, "step "+name, lay, now)
		if len(requires) > 0 {
			ks := make([]string, len(requires))
			for i, n := range requires {
				ks[i] = testKey(n).String()
			}
			r.Inputs[RequiresInput] = strings.Join(ks, " ")
		}
		if err := l.Put(ctx, r, lay); err != nil {
			t.Fatal(err)
		}
		when := now.Add(-ago)
		if err := os.Chtimes(l.recordPath(r.Key), when, when); err != nil {
			t.Fatal(err)
		}
		return r
	}
	put("p1", 30*24*time.Hour)
	put("p2", time.Hour)
	put("m", time.Minute, "p1", "p2")
	put("s", 24*time.Hour)
	items, err := l.GC().Items(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 2 {
		t.Fatalf("%d items, want 2 (the step, and the manifest with its packs)", len(items))
	}
	has := func() []string {
		var out []string
		for _, n := range []string{"m", "p1", "p2", "s"} {
			if _, err := l.readRecord(testKey(n)); err == nil {
				out = append(out, n)
			}
		}
		return out
	}
	u, err := gc.Measure(ctx, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	// One byte over the bound: only the least recently used item goes,
	// which is the day-old step, not the month-old pack.
	res, err := gc.Collect(ctx, root, []gc.Source{l.GC()}, gc.Policy{MaxSize: u.Total - 1}, now, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Removed != 1 {
		t.Errorf("removed %d items, want 1", res.Removed)
	}
	if got := has(); !slices.Equal(got, []string{"m", "p1", "p2"}) {
		t.Errorf("after a bound that reaches one item: records %v, want the manifest and both packs", got)
	}
	if _, err := gc.Collect(ctx, root, []gc.Source{l.GC()}, gc.Policy{MaxSize: 1}, now, nil); err != nil {
		t.Fatal(err)
	}
	if got := has(); len(got) != 0 {
		t.Errorf("after a bound that reaches the unit: records %v, want none", got)
	}
	if left := dirEntries(t, l.BlobDir()); len(left) != 0 {
		t.Errorf("blobs left %v", left)
	}
}
