package buildctx

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// ErrOutsideContext is returned by Digest for a path that climbs above the
// context root.
var ErrOutsideContext = errors.New("path is outside the build context")

// digestVersion is mixed into every digest so a change of the record format
// below changes every digest instead of silently colliding with old ones.
const digestVersion = "kiln-buildctx-digest-v1"

// entry is one file system object selected by Digest.
type entry struct {
	rel    string // slash-separated, root-relative
	abs    string
	mode   fs.FileMode
	uid    uint32
	gid    uint32
	target string // symlink target
	sum    string // hex sha256 of regular file bytes
	id     identity
}

// Digest returns a content digest of everything beneath the root-relative
// paths rels (each a file or directory; excluded paths are skipped): path,
// mode, uid/gid, symlink target and the bytes of each file, never mtimes.
// The digest does not depend on the order of rels or on walk order. Regular
// files are hashed in parallel.
//
// rels may be globs (path.Match syntax per component, like COPY sources).
// A named path that is a symlink is followed, scoped to the context, as COPY
// follows it; symlinks beneath a named directory are recorded as symlinks.
func (c *Context) Digest(ctx context.Context, rels []string) (digest.Digest, error) {
	entries, err := c.selected(ctx, rels)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00", digestVersion)
	for _, e := range entries {
		// NUL separates fields: it cannot occur in a path or a link target.
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00%d\x00%s\x00%s\x00", e.rel, uint32(e.mode), e.uid, e.gid, e.target, e.sum)
	}
	return digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)), nil
}

// FileDigest is one selected path and the digest of what COPY takes from
// it: its type and mode, its symlink target and its bytes — not its owner
// (COPY from the context makes files root's) and never its times.
type FileDigest struct {
	Path   string // slash-separated, context-relative ("" is the root)
	Digest string
}

// Files is Digest path by path, for cache keys that must say which file
// changed. Entries are sorted by path. The Snapshot holds the identity each
// entry had when it was hashed, for the COPY that reads them to check.
func (c *Context) Files(ctx context.Context, rels []string) ([]FileDigest, *Snapshot, error) {
	entries, err := c.selected(ctx, rels)
	if err != nil {
		return nil, nil, err
	}
	out := make([]FileDigest, 0, len(entries))
	snap := &Snapshot{root: c.root, ids: make(map[string]identity, len(entries))}
	for _, e := range entries {
		snap.ids[e.rel] = e.id
		h := sha256.New()
		fmt.Fprintf(h, "%s\x00%o\x00%s\x00%s", digestVersion, uint32(e.mode), e.target, e.sum)
		out = append(out, FileDigest{Path: e.rel, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil))})
	}
	return out, snap, nil
}

// selected walks and hashes what rels select, sorted by path.
func (c *Context) selected(ctx context.Context, rels []string) ([]*entry, error) {
	seen := map[string]bool{}
	var entries []*entry
	var names []string
	globbed := map[string]bool{}
	for _, r := range rels {
		clean := path.Clean(filepath.ToSlash(r))
		if clean == ".." || strings.HasPrefix(clean, "../") {
			return nil, fmt.Errorf("%w: %s", ErrOutsideContext, r)
		}
		rel := path.Clean("/" + filepath.ToSlash(r))[1:]
		if !strings.ContainsAny(rel, `*?[\`) {
			names = append(names, rel)
			continue
		}
		matches, err := c.glob(rel)
		if err != nil {
			return nil, fmt.Errorf("digest %s: %w", r, err)
		}
		names = append(names, matches...)
		for _, m := range matches {
			globbed[m] = true
		}
	}
	for _, rel := range names {
		r := rel
		// Follow symlinks like COPY does, scoped to the context, so the
		// digest covers what would be copied.
		start, err := securejoin.SecureJoin(c.root, filepath.FromSlash(rel))
		if err != nil {
			return nil, fmt.Errorf("digest %s: %w", r, err)
		}
		if globbed[rel] {
			// As COPY: a match that resolves to nothing (a dangling
			// symlink) is no match.
			if _, err := os.Lstat(start); errors.Is(err, fs.ErrNotExist) {
				continue
			}
		}
		err = filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			sub, err := filepath.Rel(start, p)
			if err != nil {
				return err
			}
			erel := path.Join(rel, filepath.ToSlash(sub))
			if erel == "." {
				erel = ""
			}
			if erel != "" && c.Excluded(erel, d.IsDir()) {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if seen[erel] {
				return nil
			}
			seen[erel] = true
			fi, err := d.Info()
			if err != nil {
				return err
			}
			e := &entry{rel: erel, abs: p, mode: fi.Mode()}
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				e.uid, e.gid = st.Uid, st.Gid
				e.id = identityOfSys(st)
			}
			if fi.Mode()&fs.ModeSymlink != 0 {
				if e.target, err = os.Readlink(p); err != nil {
					return err
				}
			}
			entries = append(entries, e)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("digest %s: %w", r, err)
		}
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].rel < entries[j].rel })

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0) * 2)
	for _, e := range entries {
		if !e.mode.IsRegular() {
			continue
		}
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			sum, err := hashFile(e.abs)
			if err != nil {
				return fmt.Errorf("digest %s: %w", e.rel, err)
			}
			e.sum = sum
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return entries, nil
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// glob expands a slash-separated pattern component by component inside the
// context; excluded paths never match.
func (c *Context) glob(pattern string) ([]string, error) {
	cands := []string{""}
	for _, comp := range strings.Split(pattern, "/") {
		var next []string
		for _, dir := range cands {
			if !strings.ContainsAny(comp, `*?[\`) {
				next = append(next, path.Join(dir, comp))
				continue
			}
			abs, err := securejoin.SecureJoin(c.root, filepath.FromSlash(dir))
			if err != nil {
				return nil, err
			}
			ents, err := os.ReadDir(abs)
			if err != nil {
				continue
			}
			for _, e := range ents {
				ok, err := path.Match(comp, e.Name())
				if err != nil {
					return nil, fmt.Errorf("bad pattern %q: %w", pattern, err)
				}
				if ok && !c.Excluded(path.Join(dir, e.Name()), e.IsDir()) {
					next = append(next, path.Join(dir, e.Name()))
				}
			}
		}
		cands = next
	}
	return cands, nil
}
