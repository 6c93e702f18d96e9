package fileop

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/moby/patternmatcher"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/archive"
	"github.com/kiln-build/kiln/internal/ownership"
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
//     Chmod; files hard-linked to each other in the source stay linked
//     (to the first name copied) when this copy copies both;
//   - a file replaces an existing file; a directory merges into an existing
//     directory.
type Copy struct {
	Src     Tree
	Sources []string // after ARG/ENV expansion
	Dest    string   // absolute path inside rootfs, joined with WORKDIR; a trailing "/" is significant
	Chown   *Owner   // nil = 0:0 for the context, kept for a stage
	Chmod   *Chmod   // nil = keep
	Exclude []string // COPY --exclude patterns (patternmatcher syntax), may be nil
	// Parents is COPY --parents: each source keeps its path below the
	// tree's root, or below a "/./" pivot in it ("src/./pkg/f" lands at
	// Dest/pkg/f), its parent directories copied with their metadata.
	Parents bool
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

func newCopier(w *writer, op Copy) *copier {
	return &copier{w: w, op: op, links: map[[2]uint64]string{}}
}

type copier struct {
	w       *writer
	op      Copy
	exclude *patternmatcher.PatternMatcher
	// links is the destination written for each multiply-linked source
	// inode, so the other names become hard links to it, as in BuildKit.
	links map[[2]uint64]string
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
		pivot := ""
		if op.Parents {
			if parent, rest, ok := strings.Cut(s, "/./"); ok {
				var err error
				if pivot, err = cleanSource(parent); err != nil {
					return p, err
				}
				s = path.Join(parent, rest)
			}
		}
		items, err := op.Src.expand(s)
		if err != nil {
			return p, err
		}
		for i := range items {
			items[i].pivot = pivot
		}
		p.items = append(p.items, items...)
	}
	p.dest = logical(op.Dest)
	if op.Parents {
		// Every source keeps its path under Dest: a directory.
		p.destDir = true
		return p, nil
	}
	slash := strings.HasSuffix(op.Dest, "/") || strings.HasSuffix(op.Dest, "/.") || p.dest == ""
	multi := len(op.Sources) > 1 || len(p.items) > 1
	if multi && !slash {
		return p, fmt.Errorf("copy to %s: %w", op.Dest, ErrDestNotDir)
	}
	p.destDir = slash || multi
	if !p.destDir {
		if abs, _, err := w.resolve(p.dest, true); err == nil {
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
	defer w.close()
	c := newCopier(w, op)
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
		if op.Src.Verify != nil && fi.IsDir() {
			var st unix.Stat_t
			if err := unix.Lstat(src, &st); err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrNotFound, it.name, err)
			}
			if err := op.Src.verify(it.name, &st); err != nil {
				return nil, err
			}
		}
		if op.Parents {
			if err := c.copyWithParents(ctx, it, fi, p.dest, hook); err != nil {
				return nil, err
			}
			continue
		}
		if fi.IsDir() {
			// As fsutil's prepareTargetDir: the destination of a directory's
			// contents is made like `mkdir -p` (0755, owned by Chown or root),
			// never with the source directory's metadata, and an existing
			// one is left as it is.
			if err := w.mkdirAll(ctx, p.dest, op.Chown); err != nil {
				return nil, err
			}
			if err := c.copyChildren(ctx, it.resolved, it.name, "", p.dest); err != nil {
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
		if err := c.copyEntry(src, it.name, fi, dest); err != nil {
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

// metaFor computes what the copied object name in the source directory
// dir gets: Chown, else 0:0 for the context, else the source's (recorded)
// owner; Chmod, else the source's mode.
func (c *copier) metaFor(dir int, name string, fi fs.FileInfo) meta {
	m := meta{mode: fi.Mode(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if !c.op.Src.ResetOwner {
			m.uid, m.gid = ownership.Of(dir, name, &unix.Stat_t{Dev: st.Dev, Ino: st.Ino, Mode: st.Mode, Uid: st.Uid, Gid: st.Gid})
		}
		m.rdev = uint64(st.Rdev)
	}
	if c.op.Chown != nil {
		m.uid, m.gid = c.op.Chown.UID, c.op.Chown.GID
	}
	if c.op.Chmod != nil && fi.Mode()&fs.ModeSymlink == 0 {
		m.mode = c.op.Chmod.apply(fi.Mode())
	}
	return m
}

// copyEntry copies one non-directory object, src on disk, to the logical
// path dest. rel names it for Src.Verify.
func (c *copier) copyEntry(src, rel string, fi fs.FileInfo, dest string) error {
	dir, err := unix.Open(filepath.Dir(src), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer unix.Close(dir)
	return c.copyEntryAt(dir, filepath.Base(src), rel, fi, dest)
}

// copyEntryAt copies the non-directory name in the source directory dir
// to the logical path dest, never following name if it is a symlink. rel
// names it for Src.Verify.
func (c *copier) copyEntryAt(dir int, name, rel string, fi fs.FileInfo, dest string) error {
	m := c.metaFor(dir, name, fi)
	switch {
	case fi.Mode().IsRegular():
		var id [2]uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
			id = [2]uint64{st.Dev, st.Ino}
			if first, ok := c.links[id]; ok {
				if err := c.op.Src.verifyAt(rel, dir, name); err != nil {
					return err
				}
				return c.w.writeLink(dest, first)
			}
		}
		fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("copy %s: %w", name, err)
		}
		f := os.NewFile(uintptr(fd), name)
		defer f.Close()
		// Before and after: a write while the bytes are read changes ctime.
		if err := c.op.Src.verifyFd(rel, fd); err != nil {
			return err
		}
		if err := c.w.writeFile(dest, f, m); err != nil {
			return err
		}
		if id != ([2]uint64{}) {
			c.links[id] = dest
		}
		return c.op.Src.verifyFd(rel, fd)
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := archive.Readlink(dir, name)
		if err != nil {
			return fmt.Errorf("copy %s: %w", name, err)
		}
		// After the read: a symlink is only ever replaced, and the
		// replacement has another inode.
		if err := c.op.Src.verifyAt(rel, dir, name); err != nil {
			return err
		}
		return c.w.writeSymlink(dest, target, m)
	default:
		if err := c.op.Src.verifyAt(rel, dir, name); err != nil {
			return err
		}
		return c.w.writeSpecial(dest, m)
	}
}

// copyWithParents copies item it (COPY --parents) to dest/<its path below
// its pivot>: the directories on the way are made with their sources'
// metadata where missing, as BuildKit copies them as included parents, and
// a directory item is copied whole, itself included.
func (c *copier) copyWithParents(ctx context.Context, it item, fi fs.FileInfo, dest string, hook fileHook) error {
	rel := it.name
	if it.pivot != "" {
		var ok bool
		if rel, ok = strings.CutPrefix(it.name, it.pivot+"/"); !ok {
			return fmt.Errorf("copy %s: outside its pivot %s: %w", it.name, it.pivot, ErrOutsideContext)
		}
	}
	if err := c.w.mkdirAll(ctx, dest, c.op.Chown); err != nil {
		return err
	}
	// The parents, top down; their mtimes are set again at the end.
	type made struct {
		lp    string
		mtime time.Time
	}
	var parents []made
	parts := strings.Split(rel, "/")
	for i := 1; i < len(parts); i++ {
		lp := path.Join(dest, path.Join(parts[:i]...))
		if abs, _, err := c.w.resolve(lp, false); err == nil {
			if st, err := os.Lstat(abs); err == nil && st.IsDir() {
				continue // there already: left as it is
			}
		}
		// Resolved inside the tree: a parent may be a symlink.
		srcDir, err := c.op.Src.resolve(path.Join(it.pivot, path.Join(parts[:i]...)), true)
		if err != nil {
			return err
		}
		m, err := c.sourceMeta(path.Dir(srcDir), path.Base(srcDir))
		if err != nil {
			return err
		}
		if err := c.w.ensureDir(lp, m); err != nil {
			return err
		}
		parents = append(parents, made{lp, m.mtime})
	}
	target := path.Join(dest, rel)
	src := filepath.Join(c.op.Src.Root, filepath.FromSlash(it.resolved))
	switch {
	case fi.IsDir():
		m, err := c.sourceMeta(path.Dir(it.resolved), path.Base(it.resolved))
		if err != nil {
			return err
		}
		if err := c.w.ensureDir(target, m); err != nil {
			return err
		}
		if err := c.copyChildren(ctx, it.resolved, it.name, "", target); err != nil {
			return err
		}
		parents = append(parents, made{target, m.mtime})
	default:
		handled := false
		if hook != nil && fi.Mode().IsRegular() {
			var err error
			if handled, err = hook(ctx, c, it, path.Dir(target)); err != nil {
				return err
			}
		}
		if !handled {
			if err := c.copyEntry(src, it.name, fi, target); err != nil {
				return err
			}
		}
	}
	for i := len(parents) - 1; i >= 0; i-- {
		if err := c.w.setDirMtime(parents[i].lp, parents[i].mtime); err != nil {
			return err
		}
	}
	return nil
}

// sourceMeta is what the source object name in the tree-relative
// directory dir gets when copied.
func (c *copier) sourceMeta(dir, name string) (meta, error) {
	fd, err := unix.Open(filepath.Join(c.op.Src.Root, filepath.FromSlash(dir)), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return meta{}, fmt.Errorf("copy %s: %w", path.Join(dir, name), err)
	}
	defer unix.Close(fd)
	fi := &statInfo{name: name}
	if err := unix.Fstatat(fd, name, &fi.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return meta{}, fmt.Errorf("copy %s: %w", path.Join(dir, name), err)
	}
	return c.metaFor(fd, name, fi), nil
}

// statInfo is the fs.FileInfo of an entry stat'ed relative to its
// directory's descriptor.
type statInfo struct {
	name string
	st   unix.Stat_t
}

func (s *statInfo) Name() string       { return s.name }
func (s *statInfo) Size() int64        { return s.st.Size }
func (s *statInfo) Mode() fs.FileMode  { return archive.StatMode(&s.st) }
func (s *statInfo) ModTime() time.Time { return time.Unix(s.st.Mtim.Unix()) }
func (s *statInfo) IsDir() bool        { return s.st.Mode&unix.S_IFMT == unix.S_IFDIR }

// Sys is a *syscall.Stat_t, as os.Lstat's would be.
func (s *statInfo) Sys() any {
	return &syscall.Stat_t{Dev: s.st.Dev, Ino: s.st.Ino, Nlink: s.st.Nlink, Mode: s.st.Mode, Uid: s.st.Uid,
		Gid: s.st.Gid, Rdev: s.st.Rdev, Size: s.st.Size, Blksize: s.st.Blksize, Blocks: s.st.Blocks,
		Atim: syscall.Timespec(s.st.Atim), Mtim: syscall.Timespec(s.st.Mtim), Ctim: syscall.Timespec(s.st.Ctim)}
}

// node is one object beneath a copied source directory, listed before
// anything is written.
type node struct {
	name string
	fi   fs.FileInfo
	kids []*node // a directory's visible children
}

// list reads the visible tree beneath the source directory srcRel
// (tree-relative, open as dir) in one walk. sub is srcRel relative to the
// copied source, for --exclude. Listing everything first means an object
// that appears while the copy writes (the destination inside the source,
// another process) is never copied, and nothing is copied twice. Entries
// are read relative to their directory's descriptor, so a deep tree costs
// linear time and PATH_MAX does not apply.
func (c *copier) list(ctx context.Context, dir int, srcRel, sub string) ([]*node, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	names, err := archive.ReadNames(dir)
	if err != nil {
		return nil, fmt.Errorf("copy %s: %w", srcRel, err)
	}
	sort.Strings(names)
	nodes := make([]*node, 0, len(names))
	for _, name := range names {
		fi := &statInfo{name: name}
		if err := unix.Fstatat(dir, name, &fi.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, fmt.Errorf("copy %s: %w", path.Join(srcRel, name), err)
		}
		childRel := path.Join(srcRel, name)
		childSub := path.Join(sub, name)
		if c.op.Src.excluded(childRel, fi.IsDir()) || c.excludedByFlag(childSub) {
			continue
		}
		n := &node{name: name, fi: fi}
		if fi.IsDir() {
			child, err := openDirAt(dir, name)
			if err != nil {
				return nil, fmt.Errorf("copy %s: %w", childRel, err)
			}
			n.kids, err = c.list(ctx, child, childRel, childSub)
			_ = unix.Close(child)
			if err != nil {
				return nil, err
			}
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

func openDirAt(dir int, name string) (int, error) {
	return unix.Openat(dir, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// copyChildren copies the visible children of the source directory srcRel
// (named rel as the COPY source names it) into the existing directory dest.
func (c *copier) copyChildren(ctx context.Context, srcRel, rel, sub, dest string) error {
	srcAbs := filepath.Join(c.op.Src.Root, filepath.FromSlash(srcRel))
	dir, err := unix.Open(srcAbs, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("copy %s: %w", srcRel, err)
	}
	defer unix.Close(dir)
	nodes, err := c.list(ctx, dir, srcRel, sub)
	if err != nil {
		return err
	}
	return c.write(ctx, dir, srcRel, rel, nodes, dest)
}

// write copies listed nodes of the source directory srcRel (open as dir,
// named rel for Src.Verify) into the existing directory dest.
func (c *copier) write(ctx context.Context, dir int, srcRel, rel string, nodes []*node, dest string) error {
	for _, n := range nodes {
		childDest := path.Join(dest, n.name)
		childRel := path.Join(rel, n.name)
		if !n.fi.IsDir() {
			if err := c.copyEntryAt(dir, n.name, childRel, n.fi, childDest); err != nil {
				return err
			}
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.op.Src.verify(childRel, &n.fi.(*statInfo).st); err != nil {
			return err
		}
		m := c.metaFor(dir, n.name, n.fi)
		if err := c.w.ensureDir(childDest, m); err != nil {
			return err
		}
		child, err := openDirAt(dir, n.name)
		if err != nil {
			return fmt.Errorf("copy %s: %w", path.Join(srcRel, n.name), err)
		}
		err = c.write(ctx, child, path.Join(srcRel, n.name), childRel, n.kids, childDest)
		_ = unix.Close(child)
		if err != nil {
			return err
		}
		// Children bumped the directory's mtime; restore the source's now.
		if err := c.w.setDirMtime(childDest, m.mtime); err != nil {
			return err
		}
	}
	return nil
}
