package fileop

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/moby/patternmatcher"
)

// ErrDestNotDir is returned when several sources are copied to a destination
// that does not end with "/".
var ErrDestNotDir = errors.New("when using COPY with more than one source file, the destination must be a directory and end with a /")

// Copy is one COPY (or the plain-copy part of ADD), with BuildKit semantics:
//   - each source may be a glob (filepath.Match syntax, on the path relative
//     to Src.Root; a leading "/" is allowed); a glob matching nothing is
//     not an error (nothing is copied, as in BuildKit); a missing plain source is ErrNotFound;
//   - a directory source copies its contents into Dest, not the directory
//     itself; a file source copies to Dest/<base> when Dest ends with "/",
//     Dest is an existing directory, or several files are copied, else to
//     Dest itself;
//   - several sources (or a glob matching several) need Dest to end with "/";
//   - missing parents of the destination are created 0755, owned by Chown
//     (or 0:0);
//   - symlinks inside copied directories are copied as symlinks; a source
//     that is itself a symlink is followed, scoped to Src.Root;
//   - modes (with setuid/setgid/sticky) and mtimes are preserved unless
//     Chmod; hardlinks are copied as separate files;
//   - a file replaces an existing file; a directory merges into an existing
//     directory.
type Copy struct {
	Src     Tree
	Sources []string     // after ARG/ENV expansion
	Dest    string       // absolute path inside rootfs, joined with WORKDIR; a trailing "/" is significant
	Chown   *Owner       // nil = 0:0 for the context, kept for a stage
	Chmod   *fs.FileMode // nil = keep; raw octal setuid bits (0o4000) are accepted
	Exclude []string     // COPY --exclude patterns (patternmatcher syntax), may be nil
}

// Apply performs the copy into rootfs and returns every rootfs-relative path
// (slash-separated, no leading slash) it created or modified, directories
// included, sorted. The rootfs directory itself is never listed.
func (op Copy) Apply(ctx context.Context, rootfs string) ([]string, error) {
	return op.apply(ctx, rootfs, nil)
}

// fileHook lets ADD take over a resolved regular file source (to extract an
// archive). It reports whether it handled the item.
type fileHook func(ctx context.Context, c *copier, it item, destDir string) (bool, error)

type copier struct {
	w       *writer
	op      Copy
	exclude *patternmatcher.PatternMatcher
}

// plan is a resolved copy: the items and where they go.
type plan struct {
	items   []item
	dest    string // logical destination
	destDir bool   // files go to dest/<base>
}

func (op Copy) plan(w *writer) (plan, error) {
	var p plan
	for _, s := range op.Sources {
		items, err := op.Src.expand(s)
		if err != nil {
			return p, err
		}
		p.items = append(p.items, items...)
	}
	p.dest = logical(op.Dest)
	slash := strings.HasSuffix(op.Dest, "/") || strings.HasSuffix(op.Dest, "/.") || p.dest == ""
	multi := len(op.Sources) > 1 || len(p.items) > 1
	if multi && !slash {
		return p, fmt.Errorf("copy to %s: %w", op.Dest, ErrDestNotDir)
	}
	p.destDir = slash || multi
	if !p.destDir {
		if abs, err := w.resolve(p.dest, true); err == nil {
			if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
				p.destDir = true
			}
		}
	}
	return p, nil
}

func (op Copy) apply(ctx context.Context, rootfs string, hook fileHook) ([]string, error) {
	w, err := newWriter(rootfs)
	if err != nil {
		return nil, err
	}
	c := &copier{w: w, op: op}
	if len(op.Exclude) > 0 {
		if c.exclude, err = patternmatcher.New(op.Exclude); err != nil {
			return nil, fmt.Errorf("invalid --exclude pattern: %w", err)
		}
	}
	p, err := op.plan(w)
	if err != nil {
		return nil, err
	}
	if len(p.items) == 0 {
		return nil, nil // only patterns that matched nothing: BuildKit copies nothing
	}
	for _, it := range p.items {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if c.excludedByFlag(it.name) {
			continue
		}
		src := filepath.Join(op.Src.Root, filepath.FromSlash(it.resolved))
		fi, err := os.Lstat(src)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNotFound, it.name, err)
		}
		if fi.IsDir() {
			// As fsutil's prepareTargetDir: the destination of a directory's
			// contents is made like `mkdir -p` (0755, owned by Chown or root),
			// never with the source directory's metadata, and an existing
			// one is left as it is.
			if err := w.mkdirAll(ctx, p.dest, op.Chown); err != nil {
				return nil, err
			}
			if err := c.copyChildren(ctx, it.resolved, "", p.dest); err != nil {
				return nil, err
			}
			continue
		}
		dest := p.dest
		if p.destDir {
			dest = path.Join(p.dest, path.Base(it.name))
			if it.name == "" {
				dest = p.dest
			}
		}
		if hook != nil && fi.Mode().IsRegular() {
			handled, err := hook(ctx, c, it, p.dest)
			if err != nil {
				return nil, err
			}
			if handled {
				continue
			}
		}
		if err := w.mkdirAll(ctx, path.Dir(dest), op.Chown); err != nil {
			return nil, err
		}
		if err := c.copyEntry(src, fi, dest); err != nil {
			return nil, err
		}
	}
	return w.result(), nil
}

// excludedByFlag applies COPY --exclude to a path relative to the copied
// source.
func (c *copier) excludedByFlag(rel string) bool {
	if c.exclude == nil || rel == "" {
		return false
	}
	m, err := c.exclude.MatchesOrParentMatches(filepath.FromSlash(rel))
	return err == nil && m
}

// metaFor computes what a copied object gets: Chown, else 0:0 for the
// context, else the source's owner; Chmod, else the source's mode.
func (c *copier) metaFor(fi fs.FileInfo) meta {
	m := meta{mode: fi.Mode(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if !c.op.Src.ResetOwner {
			m.uid, m.gid = int(st.Uid), int(st.Gid)
		}
		m.rdev = uint64(st.Rdev)
	}
	if c.op.Chown != nil {
		m.uid, m.gid = c.op.Chown.UID, c.op.Chown.GID
	}
	if c.op.Chmod != nil && fi.Mode()&fs.ModeSymlink == 0 {
		m.mode = fi.Mode().Type() | fileMode(*c.op.Chmod)
	}
	return m
}

// copyEntry copies one non-directory object to the logical path dest.
func (c *copier) copyEntry(src string, fi fs.FileInfo, dest string) error {
	m := c.metaFor(fi)
	switch {
	case fi.Mode().IsRegular():
		f, err := os.Open(src)
		if err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		defer f.Close()
		return c.w.writeFile(dest, f, m)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		return c.w.writeSymlink(dest, target, m)
	default:
		return c.w.writeSpecial(dest, m)
	}
}

// node is one object beneath a copied source directory, listed before
// anything is written.
type node struct {
	name string
	fi   fs.FileInfo
	kids []*node // a directory's visible children
}

// list reads the visible tree beneath the source directory srcRel
// (tree-relative) in one walk. sub is srcRel relative to the copied source,
// for --exclude. Listing everything first means an object that appears while
// the copy writes (the destination inside the source, another process) is
// never copied, and nothing is copied twice.
func (c *copier) list(ctx context.Context, srcRel, sub string) ([]*node, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	srcAbs := filepath.Join(c.op.Src.Root, filepath.FromSlash(srcRel))
	ents, err := os.ReadDir(srcAbs)
	if err != nil {
		return nil, fmt.Errorf("copy %s: %w", srcRel, err)
	}
	nodes := make([]*node, 0, len(ents))
	for _, e := range ents {
		childRel := path.Join(srcRel, e.Name())
		childSub := path.Join(sub, e.Name())
		if c.op.Src.excluded(childRel, e.IsDir()) || c.excludedByFlag(childSub) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("copy %s: %w", childRel, err)
		}
		n := &node{name: e.Name(), fi: fi}
		if fi.IsDir() {
			if n.kids, err = c.list(ctx, childRel, childSub); err != nil {
				return nil, err
			}
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// copyChildren copies the visible children of the source directory srcRel
// into the existing directory dest.
func (c *copier) copyChildren(ctx context.Context, srcRel, sub, dest string) error {
	nodes, err := c.list(ctx, srcRel, sub)
	if err != nil {
		return err
	}
	return c.write(ctx, srcRel, nodes, dest)
}

// write copies listed nodes of the source directory srcRel into the
// existing directory dest.
func (c *copier) write(ctx context.Context, srcRel string, nodes []*node, dest string) error {
	srcAbs := filepath.Join(c.op.Src.Root, filepath.FromSlash(srcRel))
	for _, n := range nodes {
		childDest := path.Join(dest, n.name)
		if !n.fi.IsDir() {
			if err := c.copyEntry(filepath.Join(srcAbs, n.name), n.fi, childDest); err != nil {
				return err
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		m := c.metaFor(n.fi)
		abs, err := c.w.ensureDir(childDest, m)
		if err != nil {
			return err
		}
		if err := c.write(ctx, path.Join(srcRel, n.name), n.kids, childDest); err != nil {
			return err
		}
		// Children bumped the directory's mtime; restore the source's now.
		if err := setMtime(abs, m.mtime); err != nil {
			return err
		}
	}
	return nil
}
