package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/kiln-build/kiln/internal/lock"
	"github.com/opencontainers/go-digest"
)

// Lock takes the shared lock that a build holds while it runs: whoever
// takes it exclusively (a sweep, a collection's temporary-file cleanup)
// knows no write is in flight. Builds never block each other. It waits
// for an exclusive holder, or until ctx is done.
func (l *Local) Lock(ctx context.Context) (unlock func(), err error) {
	return l.lock(ctx, lock.Shared)
}

// PartialFiles names, for a local cache at dir, its lock and the
// directory of its partial files. Writers hold the lock shared while they
// write there, so whoever takes it exclusively may remove every partial
// file (how a sweep cleans up after a killed writer).
func PartialFiles(dir string) (lockPath, tmpDir string) {
	return filepath.Join(dir, "lock"), filepath.Join(dir, "tmp")
}

func (l *Local) lock(ctx context.Context, mode lock.Mode) (func(), error) {
	lockPath, _ := PartialFiles(l.dir)
	held, err := lock.Acquire(ctx, lockPath, mode)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l, err)
	}
	return held.Unlock, nil
}

// Entry is one record of a local cache, for `kiln cache ls`.
type Entry struct {
	Record Record
	Size   int64 // compressed bytes of the record's blob (0: no layer)
}

// List returns every complete record, most recently used first. Records
// whose blob is missing (leftovers of a crash) are not listed.
func (l *Local) List(ctx context.Context) ([]Entry, error) {
	keys, err := l.keys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(keys))
	for _, k := range keys {
		rec, err := l.readRecord(k)
		if err != nil {
			continue // incomplete or vanished under a concurrent prune
		}
		out = append(out, Entry{Record: rec, Size: rec.Layer.Size})
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].Record, out[j].Record
		if !a.LastUsed.Equal(b.LastUsed) {
			return a.LastUsed.After(b.LastUsed)
		}
		return a.Key < b.Key
	})
	return out, nil
}

// keys lists the keys that have a record file, whatever its state.
func (l *Local) keys(ctx context.Context) ([]digest.Digest, error) {
	des, err := os.ReadDir(filepath.Join(l.dir, "records", "sha256"))
	if err != nil {
		return nil, fmt.Errorf("%s: listing records: %w", l, err)
	}
	keys := make([]digest.Digest, 0, len(des))
	for _, de := range des {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hexKey, ok := strings.CutSuffix(de.Name(), ".json")
		if !ok {
			continue
		}
		k := digest.NewDigestFromEncoded(digest.SHA256, hexKey)
		if k.Validate() != nil {
			continue
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// Export copies the records of keys, and their blobs, into dst: how
// `--cache-to type=local,dest=DIR` is written from kiln's local cache.
// Blobs are hard-linked when both caches share a filesystem and copied
// otherwise. Records keep their Created and LastUsed. Keys this cache does
// not hold are skipped; the returned error then wraps ErrNotFound and names
// them, after every other key was exported.
func (l *Local) Export(ctx context.Context, dst *Local, keys []digest.Digest) error {
	unlock, err := dst.Lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	var missing []string
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		rec, err := l.readRecord(k)
		if errors.Is(err, ErrNotFound) {
			missing = append(missing, k.String())
			continue
		}
		if err != nil {
			return fmt.Errorf("export to %s: %w", dst, err)
		}
		if !rec.Layer.IsZero() && !dst.hasBlob(rec.Layer) {
			if err := l.exportBlob(ctx, dst, rec.Layer); err != nil {
				return fmt.Errorf("export %s to %s: %w", k, dst, err)
			}
		}
		if err := dst.putRecord(rec); err != nil {
			return fmt.Errorf("export %s to %s: %w", k, dst, err)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("export to %s: %d keys skipped (%s): %w", dst, len(missing), strings.Join(missing, ", "), ErrNotFound)
	}
	return nil
}

// exportBlob hard-links a blob into dst, or copies it when linking fails
// (another filesystem, or a filesystem without links). A blob file is
// complete and never rewritten in place, so sharing its inode is safe.
func (l *Local) exportBlob(ctx context.Context, dst *Local, d Descriptor) error {
	src, final := l.blobPath(d.Digest), dst.blobPath(d.Digest)
	err := os.Link(src, final)
	if err == nil || errors.Is(err, fs.ErrExist) {
		return syncDir(filepath.Dir(final))
	}
	return dst.putBlob(ctx, d, func() (io.ReadCloser, error) { return os.Open(src) })
}
