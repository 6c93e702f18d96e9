package solver

import (
	"context"
	"fmt"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kiln-build/kiln/internal/dockerfile"
	"github.com/kiln-build/kiln/internal/registry"
)

// dispatchFiles runs the instructions that change the filesystem, each
// gathered in a file of its own: copy.go (COPY, ADD), workdir.go, run.go.
func (b *builder) dispatchFiles(ctx context.Context, s *stage, cmd instructions.Command) error {
	switch c := cmd.(type) {
	case *instructions.WorkdirCommand:
		return b.workdir(ctx, s, c)
	case *instructions.CopyCommand:
		return b.copy(ctx, s, copySpec{
			name: "COPY", params: c.SourcesAndDest, from: c.From, chown: c.Chown, chmod: c.Chmod,
			exclude: c.ExcludePatterns, parents: c.Parents, text: c.String(),
		})
	case *instructions.AddCommand:
		return b.copy(ctx, s, copySpec{
			name: "ADD", params: c.SourcesAndDest, chown: c.Chown, chmod: c.Chmod,
			exclude: c.ExcludePatterns, checksum: c.Checksum, unpack: c.Unpack, keepGitDir: c.KeepGitDir, text: c.String(),
		})
	case *instructions.RunCommand:
		return b.run(ctx, s, c)
	}
	return fmt.Errorf("%s: %w", strings.ToUpper(cmd.Name()), ErrUnsupported)
}

// fromKey identifies what a --from names for the cache: a stage by the
// chain of its final root filesystem (its contents, not how they were
// reached), an image by its manifest digest.
func (b *builder) fromKey(ctx context.Context, from string) (string, error) {
	if j, ok := b.df.StageIndex(from); ok {
		if b.planning && !b.stages[j].complete() {
			// Its chain is known once it is built.
			return "", &stopPlan{reason: "depends on rebuilt stage " + b.stages[j].name}
		}
		return "stage:" + b.stages[j].chain().String(), nil
	}
	src, err := b.imageSource(ctx, from)
	if err != nil {
		return "", err
	}
	d, err := src.base.Digest()
	if err != nil {
		return "", err
	}
	return "image:" + d.String(), nil
}

// imageSource pulls an image named by COPY --from once per build.
func (b *builder) imageSource(ctx context.Context, ref string) (*stage, error) {
	b.imagesMu.Lock()
	defer b.imagesMu.Unlock()
	if s, ok := b.images[ref]; ok {
		return s, nil
	}
	// b.ctx, not ctx: the image's layers are read lazily, later.
	img, err := registry.Image(b.ctx, ref, ociPlatform(b.platform), b.opts.Registry)
	if err != nil {
		return nil, fmt.Errorf("--from=%s: no stage of that name (stages: %s), and no such image: %w", ref, b.stageNames(), err)
	}
	s := &stage{name: ref, base: img, vars: &dockerfile.Vars{}}
	b.images[ref] = s
	return s, nil
}

// stageNames lists the named stages, for error messages.
func (b *builder) stageNames() string {
	var names []string
	for _, st := range b.df.Stages {
		if st.Name != "" {
			names = append(names, st.Name)
		}
	}
	if len(names) == 0 {
		return "none named"
	}
	return strings.Join(names, ", ")
}
