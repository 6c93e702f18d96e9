package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/gc"
	"github.com/kiln-build/kiln/internal/lock"
)

// blobGrace is how long Flush leaves a blob no kept record names after
// its last use (its mtime: written by Put, touched by a hit in Get). A
// build that hit a record reads the blob lazily, maybe much later in a
// long build, and a concurrent build's Flush may drop the record in
// between; an hour covers the longest build we expect, as the cache
// server's --evict-grace does for its unnamed blobs.
const blobGrace = time.Hour

// SetBounds sets the bounds Flush applies to the directory, with the
// registry's semantics (see keep). Call it before Flush.
func (l *Local) SetBounds(b Bounds) { l.bounds = b }

// Flush applies the bounds set with SetBounds, if any: Put is already
// durable. It keeps what keep keeps of every record in the directory, its
// own and those concurrent writers put, removes the other records, then
// every blob no remaining record names and nobody used for blobGrace.
// Records go at once, so what a new lookup sees holds to the bounds; only
// the bytes of a recently used blob linger, for at most one grace
// period, and count toward the directory's size until the next Flush
// after it.
//
// It holds the directory's lock exclusively while it does, and Put holds
// it shared from its blob check to its record, so no writer can find a
// blob present, skip writing it, and then name it in a record after the
// blob was removed. Records go before blobs: a crash in between leaves
// unnamed blobs, which the next Flush (or a sweep) removes, never a
// record whose blob is gone.
func (l *Local) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.bounds.MaxAge <= 0 && l.bounds.MaxEntries <= 0 {
		return nil
	}
	if l.readOnly {
		return fmt.Errorf("%s: flush: %w", l, ErrReadOnly)
	}
	unlock, err := l.lock(ctx, lock.Exclusive)
	if err != nil {
		return err
	}
	defer unlock()
	if err := l.applyBounds(ctx); err != nil {
		return fmt.Errorf("%s: applying max-age/max-entries: %w", l, err)
	}
	return nil
}

// applyBounds does Flush's work; the caller holds the exclusive lock.
func (l *Local) applyBounds(ctx context.Context) error {
	keys, err := l.keys(ctx)
	if err != nil {
		return err
	}
	var f gc.Freer
	all := make(map[digest.Digest]Record, len(keys))
	// A record that cannot be read (not one whose blob is gone) is left
	// alone, and since its blob cannot be known, so is every blob.
	unreadable := false
	for _, k := range keys {
		rec, err := l.readRecord(k)
		switch {
		case errors.Is(err, ErrNotFound):
			// Its blob is gone (a crash, a prune): a miss already, and
			// nobody can be writing it while we hold the lock.
			if err := f.RemoveAll(l.recordPath(k)); err != nil {
				return err
			}
		case err != nil:
			unreadable = true
		default:
			all[k] = rec
		}
	}
	now := l.now()
	if l.bounds.Now != nil {
		now = l.bounds.Now()
	}
	kept := keep(all, l.bounds, now)
	named := map[string]bool{}
	for _, r := range kept {
		delete(all, r.Key)
		if !r.Layer.IsZero() {
			named[r.Layer.Digest.Hex] = true
		}
	}
	drop := make([]Record, 0, len(all))
	for _, r := range all {
		drop = append(drop, r)
	}
	if err := l.removeRecords(&f, drop); err != nil {
		return err
	}
	if unreadable {
		return nil
	}
	blobs := filepath.Join(l.dir, "blobs", "sha256")
	des, err := os.ReadDir(blobs)
	if err != nil {
		return err
	}
	for _, de := range des {
		if named[de.Name()] {
			continue
		}
		// A blob removed since the listing is fine; one we cannot stat
		// is left for the next Flush.
		if fi, err := de.Info(); err != nil || now.Sub(fi.ModTime()) < blobGrace {
			continue
		}
		if err := f.RemoveAll(filepath.Join(blobs, de.Name())); err != nil {
			return err
		}
	}
	return nil
}
