package cache

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/testenv"
)

// Several builds that opened one registry ref before any of them flushed
// (CI jobs of one pipeline, say) and flush at once all keep their records:
// each Flush merges with what the others wrote, and checks.
func TestRegistryConcurrentWritersKeepEveryRecord(t *testing.T) {
	host := testenv.Registry(t)
	ref := newRepo(host)
	ctx := context.Background()
	const writers, each = 8, 3
	ws := make([]*Registry, writers)
	for i := range ws {
		ws[i] = openReg(t, ref, nil) // all see the same (empty) cache
	}
	var want []Record
	for i, w := range ws {
		for j := range each {
			l, _ := newLayer(t)
			rec := record(t, fmt.Sprintf("w%d-%d", i, j), fmt.Sprintf("step %d", j), l, time.Now())
			if err := w.Put(ctx, rec, l); err != nil {
				t.Fatal(err)
			}
			want = append(want, rec)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w.Flush(ctx)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	back := openReg(t, ref, nil)
	lost := 0
	for _, rec := range want {
		if _, err := back.Get(ctx, rec.Key); err != nil {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d records written by %d concurrent writers were lost", lost, len(want), writers)
	}
	// Every record the index names is readable: no blob went missing.
	for _, rec := range want {
		got, err := back.Get(ctx, rec.Key)
		if err != nil {
			continue
		}
		l, err := back.Layer(ctx, got)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, l.Compressed)
	}
}

// Builds writing one local store at once keep every record too: each
// record is its own file, renamed into place.
func TestLocalConcurrentWritersKeepEveryRecord(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	const writers, each = 8, 3
	type put struct {
		rec Record
		lay v1.Layer
	}
	puts := make([][]put, writers)
	var want []Record
	for i := range puts {
		for j := range each {
			lay, _ := newLayer(t)
			rec := record(t, fmt.Sprintf("w%d-%d", i, j), fmt.Sprintf("step %d", j), lay, time.Now())
			puts[i] = append(puts[i], put{rec, lay})
			want = append(want, rec)
		}
	}
	var wg sync.WaitGroup
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := OpenLocal(dir)
			if err != nil {
				t.Error(err)
				return
			}
			for _, p := range puts[i] {
				if err := l.Put(ctx, p.rec, p.lay); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	l, err := OpenLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range want {
		if _, err := l.Get(ctx, rec.Key); err != nil {
			t.Errorf("record lost: %v", err)
		}
	}
}
