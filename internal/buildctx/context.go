package buildctx

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// ErrNotDir is returned by Open when the context root is not a directory.
var ErrNotDir = errors.New("build context is not a directory")

// Context is a build context directory with its .dockerignore applied.
type Context struct {
	root     string
	matcher  *patternmatcher.PatternMatcher // nil when nothing is ignored
	patterns []string
	// ignoreFile is the ignore file that was applied ("" if none); kept for
	// error messages and for callers that report what was used.
	ignoreFile string
	// hidden are root-relative paths of kiln's own files (see Hide).
	hidden []hiddenPath
}

// hiddenPath is one path Hide made invisible: rel and everything beneath
// it, or, with prefix, every name in rel's directory that starts with rel's
// last component.
type hiddenPath struct {
	rel    string
	prefix bool
}

func (h hiddenPath) covers(rel string) bool {
	if h.prefix {
		return strings.HasPrefix(rel, h.rel)
	}
	return rel == h.rel || strings.HasPrefix(rel, h.rel+"/")
}

// Open loads the context rooted at dir. dockerfile is the Dockerfile's path on
// disk ("" when the Dockerfile is read from stdin).
//
// Like BuildKit, a Dockerfile-specific ignore file "<dockerfile>.dockerignore"
// (same directory and base name as the Dockerfile) wins over
// <dir>/.dockerignore; the two are never merged.
func Open(dir, dockerfile string) (*Context, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("build context %q: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%w: %s", ErrNotDir, abs)
	}
	c := &Context{root: abs}

	candidates := []string{}
	if dockerfile != "" {
		candidates = append(candidates, dockerfile+".dockerignore")
	}
	candidates = append(candidates, filepath.Join(abs, ".dockerignore"))
	for _, name := range candidates {
		f, err := os.Open(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("open ignore file: %w", err)
		}
		patterns, err := ignorefile.ReadAll(f)
		_ = f.Close()
		if err != nil {
			return nil, fmt.Errorf("read ignore file %s: %w", name, err)
		}
		if err := c.setPatterns(patterns); err != nil {
			return nil, fmt.Errorf("ignore file %s: %w", name, err)
		}
		c.ignoreFile = name
		break
	}
	return c, nil
}

// NewWithPatterns is Open with explicit ignore patterns instead of ignore
// files; useful for tests and for callers that already read the patterns.
func NewWithPatterns(dir string, patterns []string) (*Context, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("build context %q: %w", dir, err)
	}
	c := &Context{root: abs}
	if err := c.setPatterns(patterns); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Context) setPatterns(patterns []string) error {
	if len(patterns) == 0 {
		return nil
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return fmt.Errorf("invalid ignore pattern: %w", err)
	}
	c.matcher = pm
	c.patterns = patterns
	return nil
}

// Root returns the absolute path of the context directory.
func (c *Context) Root() string { return c.root }

// IgnoreFile returns the path of the ignore file that was applied, or "".
func (c *Context) IgnoreFile() string { return c.ignoreFile }

// Patterns returns the ignore patterns in effect (nil when none).
func (c *Context) Patterns() []string { return c.patterns }

// Hide makes paths that kiln itself writes (its state directory, output
// and cache destinations, temporary build directories) invisible, as if a
// .dockerignore listed them, whatever the ignore file says: reading them
// would copy kiln's own snapshots into the image while it writes them.
// Each path is absolute (or relative to the working directory); one ending
// in "*" hides every name in its directory that starts with its last
// component ("/tmp/kiln-build-*"), for temporary siblings. Paths outside the context, and the context root itself or its
// parents, are ignored.
func (c *Context) Hide(paths ...string) {
	roots := []string{c.root}
	if real, err := filepath.EvalSymlinks(c.root); err == nil && real != c.root {
		roots = append(roots, real)
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		prefix := strings.HasSuffix(p, "*")
		p = strings.TrimSuffix(p, "*")
		if prefix && (p == "" || strings.HasSuffix(p, string(filepath.Separator))) {
			continue // a prefix needs a name part: never hide a whole directory by accident
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			continue
		}
		for _, cand := range []string{abs, realPath(abs)} {
			for _, root := range roots {
				rel, err := filepath.Rel(root, cand)
				if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
					continue
				}
				c.hidden = append(c.hidden, hiddenPath{rel: filepath.ToSlash(rel), prefix: prefix})
			}
		}
	}
}

// realPath resolves the symlinks of p's longest existing ancestor, so a
// path given through a symlink (or one not created yet) is still found in
// the context.
func realPath(p string) string {
	var rest []string
	for dir := p; ; dir = filepath.Dir(dir) {
		if real, err := filepath.EvalSymlinks(dir); err == nil {
			return filepath.Join(append([]string{real}, rest...)...)
		}
		if filepath.Dir(dir) == dir {
			return p
		}
		rest = append([]string{filepath.Base(dir)}, rest...)
	}
}

// Hidden reports whether the slash-separated, root-relative path is one of
// kiln's own (see Hide).
func (c *Context) Hidden(rel string) bool {
	if c == nil || len(c.hidden) == 0 {
		return false
	}
	rel = path.Clean(strings.TrimPrefix(filepath.ToSlash(rel), "/"))
	for _, h := range c.hidden {
		if h.covers(rel) {
			return true
		}
	}
	return false
}

// Excluded reports whether the slash-separated, root-relative path is
// excluded by the ignore rules or hidden as kiln's own (Hide).
//
// For a directory that matches an exclude pattern, Excluded still reports
// false when a "!" exception could re-include something beneath it, because
// the walker must descend to find it. This follows fsutil's walker: an
// exception whose literal prefix lies under the directory, or any exception
// containing a wildcard (which could match at any depth), keeps the directory
// walkable. Such a directory is then copied even if nothing beneath it ends up
// included.
func (c *Context) Excluded(rel string, isDir bool) bool {
	if c.Hidden(rel) {
		return true
	}
	if c == nil || c.matcher == nil {
		return false
	}
	rel = path.Clean(strings.TrimPrefix(filepath.ToSlash(rel), "/"))
	if rel == "." || rel == "" {
		return false
	}
	m, err := c.matcher.MatchesOrParentMatches(filepath.FromSlash(rel))
	if err != nil || !m {
		// A malformed pattern was rejected by New; an error here means the
		// path itself could not be matched, and hiding files on an error
		// would silently drop them from the image.
		return false
	}
	if !isDir || !c.matcher.Exclusions() {
		return true
	}
	dirSlash := rel + "/"
	for _, p := range c.matcher.Patterns() {
		if !p.Exclusion() {
			continue
		}
		ps := filepath.ToSlash(p.String())
		if strings.ContainsAny(ps, "*?[\\") {
			return false
		}
		if strings.HasPrefix(ps+"/", dirSlash) {
			return false
		}
	}
	return true
}
