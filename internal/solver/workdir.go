package solver

import (
	"context"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kiln-build/kiln/internal/cachekey"
	"github.com/kiln-build/kiln/internal/fileop"
)

// workdir sets the working directory and, as BuildKit does, creates it
// (owned by the current USER) in a layer of its own.
func (b *builder) workdir(ctx context.Context, s *stage, c *instructions.WorkdirCommand) error {
	wd := resolveWorkdir(s.cfg.Config.WorkingDir, c.Path)
	s.cfg.Config.WorkingDir = wd
	if wd == "/" {
		b.commit(s, "WORKDIR /", false)
		return nil
	}
	user := s.cfg.Config.User
	st := step{op: "workdir", name: "WORKDIR " + wd, history: "WORKDIR " + wd,
		inputs: cachekey.Inputs{"instruction": "WORKDIR " + wd, "user": user}}
	return b.step(ctx, s, st, func(ctx context.Context, _ int) (v1.Layer, error) {
		return b.mutate(ctx, s, b.mounted(func(root string) error {
			var owner *fileop.Owner
			if user != "" {
				o, err := fileop.ResolveOwner(root, user)
				if err != nil {
					return fmt.Errorf("WORKDIR %s: user %s: %w", wd, user, err)
				}
				owner = &o
			}
			if _, err := fileop.Mkdir(ctx, root, wd, owner); err != nil {
				return fmt.Errorf("WORKDIR %s: %w", wd, err)
			}
			return nil
		}))
	})
}
