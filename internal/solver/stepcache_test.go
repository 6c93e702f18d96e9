package solver

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/cache"
)

// slowStore answers like the real store it wraps, after a delay, or fails.
type slowStore struct {
	cache.Store
	delay time.Duration
	err   error
}

func (s *slowStore) Get(ctx context.Context, key digest.Digest) (cache.Record, error) {
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return cache.Record{}, ctx.Err()
	}
	if s.err != nil {
		return cache.Record{}, s.err
	}
	return s.Store.Get(ctx, key)
}

// localWith is a real local store holding a record for key (or none).
func localWith(t *testing.T, key digest.Digest) *cache.Local {
	t.Helper()
	l, err := cache.OpenLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		blob := static.NewLayer([]byte("layer of "+key), types.OCILayer)
		if err := l.Put(context.Background(), cache.Record{Key: key}, blob); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// TestLookupAsksStoresAtOnceInOrder: a lookup answers what asking the
// stores one after another would (the first store in the user's order
// that has the record, a failing store a warned-about miss), in about the
// time of the slowest store it needs, not the sum of them all.
func TestLookupAsksStoresAtOnceInOrder(t *testing.T) {
	key := digest.FromString("a step")
	const d = 300 * time.Millisecond
	broken := errors.New("connection reset")
	cases := []struct {
		name   string
		stores func(t *testing.T) []cache.Store
		want   int // index of the store that answers, -1 for a miss
		warned []int
	}{
		{"slow first store that has it wins over a fast later one", func(t *testing.T) []cache.Store {
			return []cache.Store{&slowStore{Store: localWith(t, key), delay: d}, localWith(t, key)}
		}, 0, nil},
		{"misses before the hit are waited for", func(t *testing.T) []cache.Store {
			return []cache.Store{&slowStore{Store: localWith(t, ""), delay: d}, &slowStore{Store: localWith(t, ""), delay: d}, &slowStore{Store: localWith(t, key), delay: d}}
		}, 2, nil},
		{"a failing store is a warned miss", func(t *testing.T) []cache.Store {
			return []cache.Store{&slowStore{Store: localWith(t, key), delay: d, err: broken}, &slowStore{Store: localWith(t, key), delay: d}}
		}, 1, []int{0}},
		{"a store after the hit is never warned about", func(t *testing.T) []cache.Store {
			return []cache.Store{localWith(t, key), &slowStore{Store: localWith(t, key), delay: d, err: broken}}
		}, 0, nil},
		{"nobody has it", func(t *testing.T) []cache.Store {
			return []cache.Store{&slowStore{Store: localWith(t, ""), delay: d}, &slowStore{Store: localWith(t, ""), delay: d}}
		}, -1, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stores := tc.stores(t)
			var mu sync.Mutex
			var warnings []string
			c := &stepCache{asking: make(chan struct{}, maxAsking), layerCtx: context.Background(), warn: func(s string) {
				mu.Lock()
				defer mu.Unlock()
				warnings = append(warnings, s)
			}}
			for _, st := range stores {
				c.sources = append(c.sources, opened(st))
			}
			start := time.Now()
			rec, l, from, ok := c.lookup(context.Background(), key)
			took := time.Since(start)
			if tc.want < 0 {
				if ok {
					t.Fatalf("hit in %s, want a miss", from)
				}
			} else {
				if !ok {
					t.Fatalf("miss, want a hit in store %d", tc.want)
				}
				if want := stores[tc.want].String(); from != want {
					t.Errorf("hit in %s, want %s (store %d): the user's order decides", from, want, tc.want)
				}
				if rec.Key != key || l == nil {
					t.Errorf("record %v, layer %v", rec.Key, l)
				}
			}
			if took > 2*d {
				t.Errorf("lookup took %v; the stores were asked one after another (each takes %v)", took, d)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(warnings) != len(tc.warned) {
				t.Fatalf("warnings %q, want one for each of stores %v", warnings, tc.warned)
			}
			for i, w := range warnings {
				if !strings.Contains(w, stores[tc.warned[i]].String()) || !strings.Contains(w, "treated as a miss") {
					t.Errorf("warning %q does not name store %d as a miss", w, tc.warned[i])
				}
			}
		})
	}
}

// TestLookupWaitsForStoresStillOpening: a lookup that needs a store still
// opening waits for it, and a local hit does not wait for the --cache-from
// stores behind it.
func TestLookupWaitsForStoresStillOpening(t *testing.T) {
	key := digest.FromString("a step")
	first, second := localWith(t, ""), localWith(t, key)
	opening := &source{done: make(chan struct{})}
	c := &stepCache{asking: make(chan struct{}, maxAsking), layerCtx: context.Background(), warn: func(s string) { t.Error(s) }}
	c.sources = []*source{opened(first), opening}
	time.AfterFunc(200*time.Millisecond, func() {
		opening.store = second
		close(opening.done)
	})
	if _, _, from, ok := c.lookup(context.Background(), key); !ok || from != second.String() {
		t.Fatalf("lookup = %q, %v; want a hit in %s once it opened", from, ok, second)
	}

	hit := &stepCache{asking: make(chan struct{}, maxAsking), layerCtx: context.Background(), warn: func(s string) { t.Error(s) }}
	never := &source{done: make(chan struct{})} // opens after the test
	defer close(never.done)
	hit.sources = []*source{opened(second), never}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, from, ok := hit.lookup(ctx, key); !ok || from != second.String() {
		t.Fatalf("lookup = %q, %v; want a hit in %s without waiting for the store behind it", from, ok, second)
	}
	if ctx.Err() != nil {
		t.Fatal("the lookup waited for a store it did not need")
	}
}
