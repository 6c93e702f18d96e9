package graph

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestNeededPrunesToTarget(t *testing.T) {
	// 0 <- 1 <- 3, 2 unrelated, 4 needs 2 and 3.
	g := New(5)
	g.Need(1, 0)
	g.Need(3, 1)
	g.Need(4, 2)
	g.Need(4, 3)
	cases := map[int][]int{0: {0}, 3: {0, 1, 3}, 2: {2}, 4: {0, 1, 2, 3, 4}}
	for target, want := range cases {
		got, err := g.Needed(target)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("Needed(%d) = %v, want %v", target, got, want)
		}
	}
}

func TestNeededCycle(t *testing.T) {
	g := New(3)
	g.Need(0, 1)
	g.Need(1, 2)
	g.Need(2, 0)
	if _, err := g.Needed(0); !errors.Is(err, ErrCycle) {
		t.Fatalf("err = %v, want ErrCycle", err)
	}
}

// A cycle names the nodes on the loop by their labels, not as [1 0 1].
func TestNeededCycleNamesLoop(t *testing.T) {
	g := New(4)
	g.Label(1, "b")
	g.Label(2, "c")
	g.Label(3, "d")
	g.Need(0, 1)
	g.Need(1, 2)
	g.Need(2, 3)
	g.Need(3, 1)
	_, err := g.Needed(0)
	var ce *CycleError
	if !errors.As(err, &ce) || !slices.Equal(ce.Path, []int{1, 2, 3, 1}) {
		t.Fatalf("err = %#v, want the loop 1 2 3 1 (without the node leading into it)", err)
	}
	if want := "dependency cycle: b needs c needs d needs b"; err.Error() != want {
		t.Fatalf("message %q, want %q", err.Error(), want)
	}
}

func TestRunOrderAndParallelism(t *testing.T) {
	// 0 feeds 1, 2, 3 which feed 4: 1..3 must overlap, 4 must come last.
	g := New(5)
	for _, n := range []int{1, 2, 3} {
		g.Need(n, 0)
		g.Need(4, n)
	}
	var mu sync.Mutex
	var order []int
	var running, peak atomic.Int32
	err := g.Run(context.Background(), []int{0, 1, 2, 3, 4}, 3, func(ctx context.Context, n int) error {
		cur := running.Add(1)
		for {
			p := peak.Load()
			if cur <= p || peak.CompareAndSwap(p, cur) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
		running.Add(-1)
		mu.Lock()
		order = append(order, n)
		mu.Unlock()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if order[0] != 0 || order[4] != 4 {
		t.Errorf("order = %v: 0 must run first and 4 last", order)
	}
	if peak.Load() != 3 {
		t.Errorf("peak concurrency = %d, want 3 independent stages at once", peak.Load())
	}
}

func TestRunLimit(t *testing.T) {
	g := New(4)
	var running, peak atomic.Int32
	err := g.Run(context.Background(), []int{0, 1, 2, 3}, 1, func(ctx context.Context, n int) error {
		if c := running.Add(1); c > peak.Load() {
			peak.Store(c)
		}
		time.Sleep(10 * time.Millisecond)
		running.Add(-1)
		return nil
	})
	if err != nil || peak.Load() != 1 {
		t.Fatalf("err=%v peak=%d, want nil and 1", err, peak.Load())
	}
}

func TestRunErrorStopsDependents(t *testing.T) {
	g := New(2)
	g.Need(1, 0)
	boom := errors.New("boom")
	var ran1 atomic.Bool
	err := g.Run(context.Background(), []int{0, 1}, 2, func(ctx context.Context, n int) error {
		if n == 0 {
			return boom
		}
		ran1.Store(true)
		return nil
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if ran1.Load() {
		t.Error("a stage ran although the stage it needs failed")
	}
}
