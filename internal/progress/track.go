package progress

import (
	"errors"
	"slices"
	"sync"
	"time"
)

// ErrUnfinished is the error a Tracker ends an open step with: the build
// stopped (another step failed, or it was cancelled) before this one ended.
var ErrUnfinished = errors.New("not finished: the build stopped")

// Tracker is a Sink that passes events on and remembers which steps have
// started and not ended, so a build that stops early can end them all: no
// step is ever left shown as running.
type Tracker struct {
	next Sink
	mu   sync.Mutex
	open map[int]time.Time
}

// Track wraps next (nil: Discard).
func Track(next Sink) *Tracker {
	if next == nil {
		next = Discard
	}
	return &Tracker{next: next, open: map[int]time.Time{}}
}

// Emit passes e on and updates the set of open steps.
func (t *Tracker) Emit(e Event) {
	t.mu.Lock()
	switch e.Status {
	case Started:
		t.open[e.ID] = time.Now()
	case Done, Cached, Failed:
		delete(t.open, e.ID)
	}
	t.mu.Unlock()
	t.next.Emit(e)
}

// EndOpen ends every step still open as Failed with ErrUnfinished, in the
// order they were announced.
func (t *Tracker) EndOpen() {
	t.mu.Lock()
	ids := make([]int, 0, len(t.open))
	for id := range t.open {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	starts := make([]time.Time, len(ids))
	for i, id := range ids {
		starts[i] = t.open[id]
		delete(t.open, id)
	}
	t.mu.Unlock()
	for i, id := range ids {
		t.next.Emit(Event{ID: id, Status: Failed, Duration: time.Since(starts[i]), Err: ErrUnfinished})
	}
}
