package solver

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kiln-build/kiln/internal/archive"
	"github.com/kiln-build/kiln/internal/buildctx"
	"github.com/kiln-build/kiln/internal/cachekey"
	"github.com/kiln-build/kiln/internal/fileop"
	"github.com/kiln-build/kiln/internal/gitsrc"
)

type copySpec struct {
	name     string // COPY or ADD
	params   instructions.SourcesAndDest
	from     string
	chown    string
	chmod    string
	exclude  []string
	checksum string
	unpack   *bool // ADD --unpack
	parents  bool  // COPY --parents
	// keepGitDir is ADD --keep-git-dir.
	keepGitDir *bool
	text       string // the instruction as written, for progress
}

// copy runs COPY or ADD through the cache: its key covers the content of
// every source file (never mtimes), the source stage or image, and the
// destination.
func (b *builder) copy(ctx context.Context, s *stage, c copySpec) error {
	if c.checksum != "" && c.name == "COPY" {
		return fmt.Errorf("COPY: checksum can't be specified for COPY")
	}
	chmod, err := fileop.ParseChmod(c.chmod)
	if err != nil {
		return fmt.Errorf("%s: %w", c.name, err)
	}
	dest := destPath(s.cfg.Config.WorkingDir, c.params.DestPath)
	history := copyHistory(c)
	st := step{op: strings.ToLower(c.name), name: c.text, history: history + " # buildkit",
		inputs: cachekey.Inputs{"instruction": history, "dest": dest}}
	if len(c.exclude) > 0 {
		st.inputs["exclude"] = strings.Join(c.exclude, "\n")
	}
	if c.unpack != nil {
		st.inputs["option:unpack"] = strconv.FormatBool(*c.unpack)
	}
	for _, sc := range c.params.SourceContents {
		st.inputs["heredoc:"+sc.Path] = cachekey.Value(sc.Data)
	}
	gits, err := b.gitSources(ctx, &c, &st)
	if err != nil {
		return err
	}
	snap, err := b.copyInputs(ctx, c, &st)
	if err != nil {
		return err
	}
	// BuildKit marks history entries of steps it ran as LLB file or exec
	// ops with "# buildkit"; WORKDIR's mkdir is not marked.
	return b.step(ctx, s, st, func(ctx context.Context, _ int) (v1.Layer, error) {
		src, err := b.copySource(ctx, c.from)
		if err != nil {
			return nil, err
		}
		if snap != nil {
			// The key describes the files as they were hashed; copy
			// exactly those or fail, never cache a layer it does not
			// describe.
			src.Verify = snap.Check
		}
		return b.mutate(ctx, s, b.mounted(func(root string) error {
			var chown *fileop.Owner
			if c.chown != "" {
				o, err := fileop.ResolveOwner(root, c.chown)
				if err != nil {
					return fmt.Errorf("%s --chown=%s: %w", c.name, c.chown, err)
				}
				chown = &o
			}
			for _, g := range gits {
				if err := b.addGit(ctx, root, g, dest, chown, chmod); err != nil {
					return fmt.Errorf("%s %s: %w", c.name, g.text, err)
				}
			}
			if len(c.params.SourcePaths) > 0 {
				cp := fileop.Copy{Src: src, Sources: c.params.SourcePaths, Dest: dest, Chown: chown, Chmod: chmod, Exclude: c.exclude, Parents: c.parents}
				var err error
				if c.name == "ADD" {
					_, err = fileop.Add{Copy: cp, Checksum: c.checksum, Unpack: c.unpack, Limits: archive.DefaultLimits}.Apply(ctx, root)
				} else {
					_, err = cp.Apply(ctx, root)
				}
				if err == nil && snap != nil {
					err = snap.Missing()
				}
				if err != nil {
					return fmt.Errorf("%s: %w", c.name, err)
				}
			}
			if len(c.params.SourceContents) > 0 {
				files := make([]fileop.File, 0, len(c.params.SourceContents))
				for _, sc := range c.params.SourceContents {
					files = append(files, fileop.File{Name: sc.Path, Data: []byte(sc.Data)})
				}
				if _, err := fileop.WriteFiles(ctx, root, dest, files, chown, chmod); err != nil {
					return fmt.Errorf("%s: %w", c.name, err)
				}
			}
			return nil
		}))
	})
}

// copyInputs adds what a COPY/ADD reads to its cache inputs. For the
// context it returns the snapshot of what was hashed (nil when nothing was).
func (b *builder) copyInputs(ctx context.Context, c copySpec, st *step) (*buildctx.Snapshot, error) {
	if c.from != "" {
		k, err := b.fromKey(ctx, c.from)
		if err != nil {
			return nil, err
		}
		st.inputs["from"] = k
		return nil, nil
	}
	var local []string
	for _, src := range c.params.SourcePaths {
		if strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
			if c.checksum == "" {
				st.keyAfter = true // known only once downloaded
			}
			st.inputs["url:"+src] = c.checksum
			continue
		}
		local = append(local, src)
	}
	if len(local) == 0 {
		return nil, nil
	}
	files, snap, err := b.bctx.Files(ctx, local)
	if err != nil {
		// The copy itself will fail with a clear error; never hit. Should
		// it copy anything after all (a file removed while it was hashed),
		// the empty snapshot fails it: the key describes nothing.
		st.inputs["files"] = "unreadable: " + err.Error()
		return &buildctx.Snapshot{}, nil
	}
	st.files = make([]cachekey.File, len(files))
	for i, f := range files {
		st.files[i] = cachekey.File{Path: f.Path, Digest: f.Digest}
	}
	cachekey.AddFiles(st.inputs, st.files)
	return snap, nil
}

// copyHistory is BuildKit's created_by for COPY and ADD.
func copyHistory(c copySpec) string {
	msg := c.name
	if c.parents {
		msg += " --parents"
	}
	if c.chown != "" {
		msg += " --chown=" + c.chown
	}
	if c.chmod != "" {
		msg += " --chmod=" + c.chmod
	}
	for _, src := range c.params.SourcePaths {
		// A git remote's credentials stay out of history and keys.
		msg += " " + gitsrc.Redact(src)
	}
	for _, sc := range c.params.SourceContents {
		msg += " <<" + sc.Path
	}
	return msg + " " + c.params.DestPath
}

// copySource is where COPY reads from: the build context (with
// .dockerignore, files owned by root), a finished stage, or an image.
func (b *builder) copySource(ctx context.Context, from string) (fileop.Tree, error) {
	if from == "" {
		return fileop.Tree{Root: b.bctx.Root(), Exclude: b.bctx.Excluded, ResetOwner: true}, nil
	}
	var src *stage
	if j, ok := b.df.StageIndex(from); ok {
		src = b.stages[j]
	} else {
		var err error
		if src, err = b.imageSource(ctx, from); err != nil {
			return fileop.Tree{}, err
		}
	}
	root, err := b.stageRoot(ctx, src)
	if err != nil {
		return fileop.Tree{}, err
	}
	return fileop.Tree{Root: root}, nil
}
