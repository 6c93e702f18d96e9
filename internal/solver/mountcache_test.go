package solver

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/lock"
	"github.com/kiln-build/kiln/internal/progress"
)

type recordSink struct {
	mu     sync.Mutex
	events []progress.Event
}

func (r *recordSink) Emit(e progress.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

// A cache mount in use by another build is saved once it is free, and
// skipped with a warning when it stays busy past the bound: never saved
// while written.
func TestSaveMountWaitsForItsLock(t *testing.T) {
	old := mountArchiveWait
	mountArchiveWait = 300 * time.Millisecond
	t.Cleanup(func() { mountArchiveWait = old })
	dir := filepath.Join(t.TempDir(), "m")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	sink := &recordSink{}
	b := &builder{sink: sink, layer: image.LayerOptions{Dir: t.TempDir()}}
	held, err := lock.Acquire(context.Background(), dir+".lock", lock.Shared)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, ok, err := b.lockMount(context.Background(), "m", dir); err != nil || ok {
		t.Fatalf("busy mount: ok=%v err=%v, want skipped", ok, err)
	}
	if d := time.Since(start); d < mountArchiveWait || d > 5*time.Second {
		t.Errorf("gave up after %s, want about %s", d, mountArchiveWait)
	}
	if len(sink.events) != 1 || !strings.Contains(sink.events[0].Log, "cache mount m not exported") {
		t.Errorf("events %+v, want one warning naming the mount", sink.events)
	}
	go func() { time.Sleep(100 * time.Millisecond); held.Unlock() }()
	unlock, ok, err := b.lockMount(context.Background(), "m", dir)
	if err != nil || !ok {
		t.Fatalf("mount freed while waiting: ok=%v err=%v, want locked", ok, err)
	}
	unlock()
}
