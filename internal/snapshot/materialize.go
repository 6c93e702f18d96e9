package snapshot

import (
	"context"
	"fmt"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Materialize extracts layers, bottom first, into dir (created if missing;
// it should be empty), leaving the merged root filesystem there.
func Materialize(ctx context.Context, dir string, layers []v1.Layer) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("materialize: %w", err)
	}
	for i, l := range layers {
		if err := applyLayer(ctx, dir, l); err != nil {
			return fmt.Errorf("materialize layer %d: %w", i, err)
		}
	}
	return nil
}

func applyLayer(ctx context.Context, dir string, l v1.Layer) error {
	rc, err := openLayer(ctx, l)
	if err != nil {
		return err
	}
	defer rc.Close()
	if err := Apply(ctx, dir, rc); err != nil {
		return err
	}
	return drain(rc)
}
