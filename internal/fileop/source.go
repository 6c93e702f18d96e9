package fileop

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sentinel errors; callers distinguish them with errors.Is. They are always
// wrapped with the source or path they concern.
var (
	ErrNotFound       = errors.New("not found")
	ErrOutsideContext = errors.New("outside of the build context")
	ErrNotSupported   = errors.New("not supported")
)

// maxSymlinks bounds symlink resolution, like the kernel's ELOOP limit.
const maxSymlinks = 255

// Tree is a source of files: the build context, or another stage's root
// filesystem.
type Tree struct {
	Root string // directory on disk
	// Exclude is optional (the context's .dockerignore): excluded paths are
	// invisible: not copied, not matched by globs, "not found" when named.
	Exclude func(rel string, isDir bool) bool
	// ResetOwner is true for the build context: copied files get 0:0
	// (BuildKit); false for a stage: uid/gid are kept.
	ResetOwner bool
	// Verify is optional (the build context, whose cache key was computed
	// from an earlier walk): it is called with the stat of every object
	// copied (a regular file's both before and after its bytes are read),
	// named by its tree-relative path as the COPY source names it, and an
	// error it returns fails the copy.
	Verify func(rel string, st *unix.Stat_t) error
}

func (t Tree) verify(rel string, st *unix.Stat_t) error {
	if t.Verify == nil {
		return nil
	}
	return t.Verify(rel, st)
}

// verifyFd checks the object open as fd.
func (t Tree) verifyFd(rel string, fd int) error {
	if t.Verify == nil {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("copy %s: %w", rel, err)
	}
	return t.Verify(rel, &st)
}

// verifyAt checks the object name in the directory dir, not following it.
func (t Tree) verifyAt(rel string, dir int, name string) error {
	if t.Verify == nil {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("copy %s: %w", rel, err)
	}
	return t.Verify(rel, &st)
}

func (t Tree) excluded(rel string, isDir bool) bool {
	return t.Exclude != nil && rel != "" && t.Exclude(rel, isDir)
}

// cleanSource turns a user-written source into a slash-separated path
// relative to the tree root ("" for the root itself), refusing paths that
// climb above the root.
func cleanSource(src string) (string, error) {
	s := filepath.ToSlash(src)
	s = strings.TrimLeft(s, "/")
	if s == "" {
		return "", nil
	}
	c := path.Clean(s)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: %s", ErrOutsideContext, src)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

// resolve follows the tree-relative path rel inside t.Root, following every
// symlink (including the last component when followLast is set). Absolute
// link targets are taken relative to the tree root, as they would be inside
// a container; a relative target that climbs above the root is refused with
// ErrOutsideContext. It returns the resolved tree-relative path.
func (t Tree) resolve(rel string, followLast bool) (string, error) {
	var done []string // resolved components
	todo := splitPath(rel)
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		if c == ".." {
			if len(done) == 0 {
				return "", fmt.Errorf("%w: %s climbs above the root", ErrOutsideContext, rel)
			}
			done = done[:len(done)-1]
			continue
		}
		cur := append(append([]string{}, done...), c)
		if len(todo) == 0 && !followLast {
			done = cur
			break
		}
		p := filepath.Join(t.Root, filepath.FromSlash(strings.Join(cur, "/")))
		fi, err := os.Lstat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return "", fmt.Errorf("%w: %s", ErrNotFound, rel)
			}
			return "", fmt.Errorf("resolve %s: %w", rel, err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			done = cur
			continue
		}
		links++
		if links > maxSymlinks {
			return "", fmt.Errorf("resolve %s: too many levels of symbolic links", rel)
		}
		target, err := os.Readlink(p)
		if err != nil {
			return "", fmt.Errorf("resolve %s: %w", rel, err)
		}
		if path.IsAbs(target) {
			done = nil
		}
		todo = append(splitPath(target), todo...)
	}
	return strings.Join(done, "/"), nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(filepath.ToSlash(p), "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

func hasMeta(s string) bool { return strings.ContainsAny(s, `*?[\`) }

// item is one source file system object selected by a COPY source.
type item struct {
	name     string // tree-relative path as written or matched; its base names the copy
	resolved string // tree-relative path after following symlinks
	pivot    string // COPY --parents: the tree-relative directory its path is kept below
}

// expand returns the objects a source names: the path itself, or every path
// a glob matches (sorted, excluded paths invisible), symlinks followed and
// scoped to the root.
func (t Tree) expand(src string) ([]item, error) {
	rel, err := cleanSource(src)
	if err != nil {
		return nil, err
	}
	if !hasMeta(rel) {
		return t.named(src, rel)
	}
	// Glob component by component so every directory read is resolved
	// inside the tree and excluded entries never match.
	cands := []string{""}
	for _, comp := range splitPath(rel) {
		var next []string
		for _, dir := range cands {
			if !hasMeta(comp) {
				next = append(next, path.Join(dir, comp))
				continue
			}
			rdir, err := t.resolve(dir, true)
			if err != nil {
				if errors.Is(err, ErrNotFound) {
					continue
				}
				return nil, err
			}
			ents, err := os.ReadDir(filepath.Join(t.Root, filepath.FromSlash(rdir)))
			if err != nil {
				continue // not a directory, or unreadable: no matches there
			}
			for _, e := range ents {
				ok, err := path.Match(comp, e.Name())
				if err != nil {
					return nil, fmt.Errorf("bad pattern %q: %w", src, err)
				}
				if ok {
					next = append(next, path.Join(dir, e.Name()))
				}
			}
		}
		cands = next
	}
	var out []item
	for _, c := range cands {
		r, err := t.named(src, c)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r...)
	}
	// BuildKit's Dockerfile frontend sets AllowEmptyWildcard: a pattern
	// that matches nothing copies nothing and is not an error.
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// named resolves one literal tree-relative path and checks it is visible.
func (t Tree) named(src, rel string) ([]item, error) {
	// The path as written must be visible, and so must whatever it
	// resolves to: a symlink may not smuggle an ignored file in.
	r, err := t.resolve(rel, true)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	fi, err := os.Lstat(filepath.Join(t.Root, filepath.FromSlash(r)))
	if err != nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, src)
	}
	if t.excluded(rel, fi.IsDir()) || t.excluded(r, fi.IsDir()) {
		return nil, fmt.Errorf("%w: %s (excluded by .dockerignore)", ErrNotFound, src)
	}
	return []item{{name: rel, resolved: r}}, nil
}
