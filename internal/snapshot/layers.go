package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// layerStore keeps each layer extracted once, in overlay form, under
// dir/<short diffID>. One store serves every snapshotter on the same root
// in this process; other processes on the same root are kept safe by the
// atomic rename (a loser of the race discards its copy).
type layerStore struct {
	dir   string
	mu    sync.Mutex
	calls map[string]*extraction // in flight, by short id
}

type extraction struct {
	done chan struct{}
	err  error
}

var stores sync.Map // layers dir -> *layerStore

func storeFor(dir string) *layerStore {
	v, _ := stores.LoadOrStore(dir, &layerStore{dir: dir, calls: map[string]*extraction{}})
	return v.(*layerStore)
}

// shortID keeps lowerdir paths short (the whole mount data must fit in one
// page); 64 bits of the diffID are plenty to tell a machine's layers apart.
func shortID(h v1.Hash) string {
	if len(h.Hex) < 16 {
		return h.Hex
	}
	return h.Hex[:16]
}

// get returns the directory holding l extracted, extracting it unless that
// was done before, in a temporary directory under private (the build's own
// state: a build killed mid-extraction leaves its partial layer where the
// sweep of dead builds removes it) renamed into place. private must be on
// the store's filesystem. Concurrent calls for one layer wait for a single
// extraction; a failed one is forgotten, so the next call retries.
func (s *layerStore) get(ctx context.Context, l v1.Layer, private string) (string, error) {
	h, err := l.DiffID()
	if err != nil {
		return "", fmt.Errorf("layer diffID: %w", err)
	}
	id := shortID(h)
	final := filepath.Join(s.dir, id)
	for {
		s.mu.Lock()
		if c, ok := s.calls[id]; ok {
			s.mu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				return "", fmt.Errorf("wait for layer %s: %w", h, ctx.Err())
			}
			// Another caller's cancellation is not our failure: retry.
			if c.err != nil && !errors.Is(c.err, context.Canceled) && !errors.Is(c.err, context.DeadlineExceeded) {
				return "", c.err
			}
			continue
		}
		if _, err := os.Lstat(final); err == nil {
			s.mu.Unlock()
			// The directory's mtime is its last use, for eviction.
			now := time.Now()
			_ = os.Chtimes(final, now, now)
			return final, nil
		}
		c := &extraction{done: make(chan struct{})}
		s.calls[id] = c
		s.mu.Unlock()

		c.err = s.extract(ctx, l, final, private)
		s.mu.Lock()
		delete(s.calls, id)
		s.mu.Unlock()
		close(c.done)
		if c.err != nil {
			return "", c.err
		}
		return final, nil
	}
}

// extract writes l into a temporary directory under private and renames it
// into place, so a crash never leaves a half-extracted layer under its
// final name. Nothing is fsynced: the rename is the commit.
func (s *layerStore) extract(ctx context.Context, l v1.Layer, final, private string) error {
	h, _ := l.DiffID()
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("extract layer %s: %w", h, err)
	}
	if err := os.MkdirAll(private, 0o700); err != nil {
		return fmt.Errorf("extract layer %s: %w", h, err)
	}
	tmp, err := os.MkdirTemp(private, "tmp-layer-")
	if err != nil {
		return fmt.Errorf("extract layer %s: %w", h, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := os.Chmod(tmp, 0o755); err != nil {
		return fmt.Errorf("extract layer %s: %w", h, err)
	}
	rc, err := openLayer(ctx, l)
	if err != nil {
		return fmt.Errorf("extract layer %s: %w", h, err)
	}
	err = ApplyOverlay(ctx, tmp, rc)
	if err == nil {
		// Nothing is renamed into place before both digests matched.
		err = drain(rc)
	}
	if cerr := rc.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	if err != nil {
		return fmt.Errorf("extract layer %s: %w", h, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		if _, serr := os.Lstat(final); serr == nil {
			// Another process on this root got there first.
			return nil
		}
		return fmt.Errorf("extract layer %s: %w", h, err)
	}
	ok = true
	return nil
}

// adopt moves dir into place as the extracted form of the layer with
// diffID h, unless that layer is already there or being extracted. The
// rename is atomic, so readers see the whole directory or none.
func (s *layerStore) adopt(h v1.Hash, dir string) {
	id := shortID(h)
	final := filepath.Join(s.dir, id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, busy := s.calls[id]; busy {
		return
	}
	if _, err := os.Lstat(final); err == nil {
		return
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return
	}
	_ = os.Rename(dir, final)
}
