package gc

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/kiln-build/kiln/internal/lock"
)

// Item is one evictable thing a store keeps: a cache blob with the records
// naming it, an image, an extracted layer, a cache mount.
type Item struct {
	Kind Kind
	// Name identifies the item in prune output.
	Name     string
	LastUsed time.Time
	// Pins are the lease pins that keep the item: a live lease holding any
	// of them means a running kiln uses it.
	Pins []string
	// Lock, when set, is a lock file its users hold shared or exclusive;
	// the item is in use unless Collect can take it exclusively.
	Lock string
	// Superseded marks an item a newer result replaced (the extracted form
	// of a layer whose step has since produced another): removed even
	// when the bound is not reached, since no build is expected to reuse it.
	Superseded bool
	// Remove deletes the item through f, which counts what is freed.
	Remove func(f *Freer) error
	// Frees, when set, says whether removing the item now would free any
	// bytes: a cache blob whose image store link remains frees nothing,
	// and is removed for size only after what holds its bytes is gone.
	Frees func() bool
}

// A Source lists a store's items. Sweep, run after eviction, removes what
// the evictions left unreferenced (blobs no record names, debris).
type Source interface {
	Items(ctx context.Context) ([]Item, error)
	Sweep(ctx context.Context, f *Freer, pins map[string]bool) error
}

// An ImmutableSource also says which of its directories never change
// once named (see Measure), so they are walked once.
type ImmutableSource interface {
	Immutable(path string) bool
}

// Immutable combines what sources say about immutable directories.
func Immutable(sources []Source) func(path string) bool {
	var fs []func(string) bool
	for _, s := range sources {
		if im, ok := s.(ImmutableSource); ok {
			fs = append(fs, im.Immutable)
		}
	}
	if len(fs) == 0 {
		return nil
	}
	return func(p string) bool {
		for _, f := range fs {
			if f(p) {
				return true
			}
		}
		return false
	}
}

// Policy says what Collect removes. Items in use are never removed.
type Policy struct {
	// All removes every item.
	All bool
	// Until removes items unused for longer than this (0: no age limit).
	Until time.Duration
	// MaxSize removes least recently used items until root holds at most
	// this many bytes (0: no size limit).
	MaxSize int64
	// Superseded also removes items marked Superseded.
	Superseded bool
}

// Result is what a collection did.
type Result struct {
	Removed int
	Freed   int64
	// InUse counts items kept because a running kiln uses them.
	InUse int
	// Before and After are root's total before and (as computed) after.
	Before, After int64
}

// Collect removes items of sources from kiln's directory root as p says,
// least recently used first, never an item a live lease pins or whose
// lock is held. live lists the directories of running builds (their
// leases); it is called once the collection holds root's gc lock
// exclusively, so pins wait for it and it sees every pin made before.
func Collect(ctx context.Context, root string, sources []Source, p Policy, now time.Time, live func() ([]string, error)) (Result, error) {
	var res Result
	gl, err := lock.Acquire(ctx, gcLockPath(root), lock.Exclusive)
	if err != nil {
		return res, fmt.Errorf("collect: %w", err)
	}
	defer gl.Unlock()
	var dirs []string
	if live != nil {
		if dirs, err = live(); err != nil {
			return res, fmt.Errorf("collect: running builds: %w", err)
		}
	}
	pins := readPins(dirs)
	u, err := Measure(ctx, root, Immutable(sources))
	if err != nil {
		return res, err
	}
	res.Before = u.Total
	var items []Item
	for _, s := range sources {
		its, err := s.Items(ctx)
		if err != nil {
			return res, fmt.Errorf("collect: %w", err)
		}
		items = append(items, its...)
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].LastUsed.Before(items[j].LastUsed) })
	f := &Freer{}
	over := func() bool { return p.MaxSize > 0 && u.Total-f.Freed() > p.MaxSize }
	var deferred []Item
	remove := func(it Item) error {
		if pinned(it, pins) {
			res.InUse++
			return nil
		}
		var held *lock.Lock
		if it.Lock != "" {
			l, ok, err := lock.TryAcquire(it.Lock, lock.Exclusive)
			if err != nil {
				return fmt.Errorf("collect %s: %w", it.Name, err)
			}
			if !ok {
				res.InUse++
				return nil
			}
			held = l
		}
		err := it.Remove(f)
		held.Unlock()
		if err != nil {
			return fmt.Errorf("collect %s %s: %w", it.Kind, it.Name, err)
		}
		res.Removed++
		return nil
	}
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return res, err
		}
		forced := p.All || (p.Until > 0 && now.Sub(it.LastUsed) > p.Until) || (p.Superseded && it.Superseded)
		switch {
		case forced:
		case over() && it.Frees != nil && !it.Frees():
			// Its bytes are held elsewhere: removing it would lose it
			// and free nothing. Retried below if still over.
			deferred = append(deferred, it)
			continue
		case over():
		default:
			continue
		}
		if err := remove(it); err != nil {
			return res, err
		}
	}
	for _, it := range deferred {
		if !over() {
			break
		}
		if err := remove(it); err != nil {
			return res, err
		}
	}
	for _, s := range sources {
		if err := s.Sweep(ctx, f, pins); err != nil {
			return res, fmt.Errorf("collect: %w", err)
		}
	}
	res.Freed = f.Freed()
	res.After = u.Total - res.Freed
	return res, nil
}

func pinned(it Item, pins map[string]bool) bool {
	for _, p := range it.Pins {
		if pins[p] {
			return true
		}
	}
	return false
}
