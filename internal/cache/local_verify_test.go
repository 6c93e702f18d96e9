package cache

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// A blob corrupted on disk with its size intact (a bit flip) is a hit —
// Get only stats it — but the read that finds the damage removes it, says
// so, and from then on the step is a miss, not a hit that fails again.
func TestLocalCorruptBlobIsDropped(t *testing.T) {
	for _, read := range []string{"compressed", "uncompressed"} {
		t.Run(read, func(t *testing.T) {
			ctx := context.Background()
			l := openLocal(t, t.TempDir())
			lay, _ := newLayer(t)
			rec := record(t, "flipped", "step", lay, time.Now())
			if err := l.Put(ctx, rec, lay); err != nil {
				t.Fatal(err)
			}
			p := l.blobPath(rec.Layer.Digest)
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x40
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}

			hit, err := l.Get(ctx, rec.Key)
			if err != nil {
				t.Fatalf("Get before any read: %v (a same-size blob is only found corrupt by reading it)", err)
			}
			cached, err := l.Layer(ctx, hit)
			if err != nil {
				t.Fatal(err)
			}
			open := cached.Compressed
			if read == "uncompressed" {
				open = cached.Uncompressed
			}
			err = drain(open)
			if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "removed") {
				t.Fatalf("reading a corrupt blob: %v; want ErrDigestMismatch saying the blob was removed", err)
			}
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the corrupt blob is still on disk: %v", err)
			}
			if _, err := l.Get(ctx, rec.Key); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get after the corrupt read: %v, want a miss", err)
			}
			// The next build rebuilds and stores the step again.
			if err := l.Put(ctx, rec, lay); err != nil {
				t.Fatal(err)
			}
			again, err := l.Get(ctx, rec.Key)
			if err != nil {
				t.Fatal(err)
			}
			cached, err = l.Layer(ctx, again)
			if err != nil {
				t.Fatal(err)
			}
			if err := drain(cached.Uncompressed); err != nil {
				t.Errorf("the re-stored blob: %v", err)
			}
		})
	}
}

func drain(open func() (io.ReadCloser, error)) error {
	rc, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(io.Discard, rc)
	return err
}
