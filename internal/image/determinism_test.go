package image

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteLayerDeterministic(t *testing.T) {
	requireRoot(t)
	root, ch := fixture(t)
	later := epoch.Add(48 * time.Hour)
	touch := func(tm time.Time) {
		t.Helper()
		for _, p := range []string{"new.txt", "usr", "usr/local/bin/tool"} {
			if err := os.Chtimes(filepath.Join(root, p), tm, tm); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name        string
		c           Compression
		level       int
		oci         bool
		withEpoch   bool
		touchAfter  time.Time // new mtime for some sources before the 2nd write
		wantSameDig bool
	}{
		{"gzip same input", Gzip, 0, false, false, time.Time{}, true},
		{"gzip best", Gzip, 9, true, false, time.Time{}, true},
		{"zstd same input", Zstd, 0, true, false, time.Time{}, true},
		{"zstd level 19", Zstd, 19, true, false, time.Time{}, true},
		{"uncompressed", Uncompressed, 0, true, false, time.Time{}, true},
		{"gzip epoch hides later mtimes", Gzip, 0, false, true, later, true},
		{"zstd epoch hides later mtimes", Zstd, 0, true, true, later, true},
		{"gzip no epoch sees mtimes", Gzip, 0, false, false, later, false},
		{"gzip epoch keeps earlier mtimes", Gzip, 0, false, true, epoch.Add(-time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			touch(later.Add(time.Hour)) // start above the epoch
			opts := LayerOptions{Compression: tt.c, OCI: tt.oci}
			if tt.level != 0 {
				opts.Level = &tt.level
			}
			if tt.withEpoch {
				e := epoch
				opts.Epoch = &e
			}
			write := func() *Layer {
				o := opts
				o.Dir = t.TempDir() // a different directory must not matter
				l, err := WriteLayer(context.Background(), root, ch, o)
				if err != nil {
					t.Fatal(err)
				}
				checkLayer(t, l)
				return l
			}
			a := write()
			if !tt.touchAfter.IsZero() {
				touch(tt.touchAfter)
			}
			b := write()
			da, _ := a.Digest()
			db, _ := b.Digest()
			if (da == db) != tt.wantSameDig {
				t.Errorf("digests %s and %s: same = %v, want %v", da, db, da == db, tt.wantSameDig)
			}
		})
	}
}
