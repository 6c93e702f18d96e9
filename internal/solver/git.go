package solver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"

	"github.com/kiln-build/kiln/internal/cachekey"
	"github.com/kiln-build/kiln/internal/fileop"
	"github.com/kiln-build/kiln/internal/gitsrc"
)

// gitSource is one git source of an ADD, its ref resolved to a commit
// when the step's key was made.
type gitSource struct {
	text   string // as written, credentials hidden
	src    *gitsrc.Source
	commit string
	opts   gitsrc.Options
}

// gitSources takes the git sources out of c's sources and puts the commit
// each names into the step's key, so a moved branch is a miss: the commit,
// not the ref, is what the cached layer holds. As BuildKit, COPY refuses
// them and ADD's --keep-git-dir and #ref?keep-git-dir must agree.
func (b *builder) gitSources(ctx context.Context, c *copySpec, st *step) ([]gitSource, error) {
	if c.from != "" {
		return nil, nil
	}
	var out []gitSource
	var rest []string
	for _, text := range c.params.SourcePaths {
		src, ok, err := gitsrc.Parse(text)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", c.name, gitsrc.Redact(text), err)
		}
		if !ok {
			rest = append(rest, text)
			continue
		}
		if c.name != "ADD" {
			return nil, errors.New("source can't be a git ref for COPY")
		}
		keep := c.keepGitDir
		if src.KeepGitDir != nil {
			if keep != nil && *keep != *src.KeepGitDir {
				return nil, errors.New("inconsistent keep-git-dir configuration")
			}
			keep = src.KeepGitDir
		}
		g := gitSource{text: gitsrc.Redact(text), src: src, opts: gitsrc.Options{Submodules: src.Submodules == nil || *src.Submodules}}
		g.opts.KeepGitDir = keep != nil && *keep
		if g.commit, err = gitsrc.Resolve(ctx, src.Remote, src.Ref); err != nil {
			return nil, fmt.Errorf("%s %s: %w", c.name, gitsrc.Redact(text), err)
		}
		switch {
		case c.checksum != "" && src.Checksum != "" && c.checksum != src.Checksum:
			return nil, fmt.Errorf("checksum mismatch %q != %q", c.checksum, src.Checksum)
		case src.Checksum == "":
			src.Checksum = c.checksum
		}
		if src.Checksum != "" && !strings.HasPrefix(g.commit, src.Checksum) {
			return nil, fmt.Errorf("%s %s: checksum mismatch: the ref is at %s, the checksum wants %s", c.name, gitsrc.Redact(text), g.commit, src.Checksum)
		}
		st.inputs["git:"+gitsrc.Redact(text)] = cachekey.Value(fmt.Sprintf("%s subdir=%s keep-git-dir=%s submodules=%s",
			g.commit, src.SubDir, strconv.FormatBool(g.opts.KeepGitDir), strconv.FormatBool(g.opts.Submodules)))
		out = append(out, g)
	}
	c.params.SourcePaths = rest
	return out, nil
}

// addGit checks g out and copies its tree (or its subdirectory) into
// dest, as BuildKit copies a git source's root: dest made like mkdir -p,
// files owned by root unless --chown.
func (b *builder) addGit(ctx context.Context, root string, g gitSource, dest string, chown *fileop.Owner, chmod *fileop.Chmod) error {
	dir, err := os.MkdirTemp(b.tmp, "git-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if err := gitsrc.Checkout(ctx, g.src.Remote, g.src.Ref, g.commit, dir, g.opts); err != nil {
		return err
	}
	tree := dir
	if g.src.SubDir != "" {
		// Inside the checkout, whatever symlinks the repository holds.
		if tree, err = securejoin.SecureJoin(dir, g.src.SubDir); err != nil {
			return err
		}
		if fi, err := os.Stat(tree); err != nil || !fi.IsDir() {
			return fmt.Errorf("no directory %s in %s at %s", g.src.SubDir, g.src.Remote, g.commit)
		}
	}
	d := dest
	if d == "" || d[len(d)-1] != '/' {
		d += "/"
	}
	_, err = fileop.Copy{Src: fileop.Tree{Root: tree, ResetOwner: true}, Sources: []string{"."}, Dest: d, Chown: chown, Chmod: chmod}.Apply(ctx, root)
	return err
}
