// Package gitsrc fetches the git sources ADD takes
// (https://host/repo.git#ref:subdir, git@host:repo.git, ssh://…) with the
// git command, as BuildKit's git source does: the ref resolved to a commit
// first, so the commit is what a cache key names; a shallow fetch of that
// commit; submodules unless asked not to; every file's mtime the commit's
// time; .git dropped unless kept.
package gitsrc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/dfgitutil"
	"golang.org/x/sys/unix"
)

// Source is a parsed git source.
type Source = dfgitutil.GitRef

// Parse reads src as BuildKit's Dockerfile frontend does; ok is false for
// what is not a git source (a plain URL, a context path).
func Parse(src string) (s *Source, ok bool, err error) {
	s, isGit, err := dfgitutil.ParseGitRef(src)
	if err != nil {
		if isGit {
			return nil, true, err
		}
		return nil, false, nil
	}
	if s.IndistinguishableFromLocal {
		return nil, false, nil
	}
	return s, true, nil
}

var fullCommit = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)

// Resolve returns the commit ref names on remote ("" is the remote's
// HEAD): a full commit id is taken as it is, anything else asked of the
// remote with `git ls-remote`, a tag's peeled commit preferred.
func Resolve(ctx context.Context, remote, ref string) (string, error) {
	if fullCommit.MatchString(ref) {
		return ref, nil
	}
	want := ref
	if want == "" {
		want = "HEAD"
	}
	out, err := git(ctx, "", "ls-remote", "--", remote, want, "refs/heads/"+want, "refs/tags/"+want, "refs/tags/"+want+"^{}")
	if err != nil {
		return "", err
	}
	found := map[string]string{}
	for line := range strings.Lines(string(out)) {
		commit, name, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if ok {
			found[name] = commit
		}
	}
	for _, name := range []string{want, "refs/tags/" + want + "^{}", "refs/tags/" + want, "refs/heads/" + want} {
		if c, ok := found[name]; ok {
			return c, nil
		}
	}
	return "", fmt.Errorf("git %s: no ref %q", Redact(remote), ref)
}

// Options are what a checkout keeps.
type Options struct {
	KeepGitDir bool
	Submodules bool
}

// Checkout fetches commit (the one Resolve gave for ref) from remote into
// the empty directory dir. A ref that moved since Resolve is an error, so
// what is written is always the commit a key names.
func Checkout(ctx context.Context, remote, ref, commit, dir string, o Options) error {
	if _, err := git(ctx, dir, "init", "-q"); err != nil {
		return err
	}
	if _, err := git(ctx, dir, "remote", "add", "origin", remote); err != nil {
		return err
	}
	// By ref where there is one: not every server serves a commit id.
	what := commit
	if ref != "" && !fullCommit.MatchString(ref) {
		what = ref
	}
	if _, err := git(ctx, dir, "fetch", "-q", "--depth=1", "--no-tags", "origin", what); err != nil {
		return err
	}
	got, err := git(ctx, dir, "rev-parse", "FETCH_HEAD^{commit}")
	if err != nil {
		return err
	}
	if c := strings.TrimSpace(string(got)); c != commit {
		return fmt.Errorf("git %s: %s moved from %s to %s while the build ran; build again", Redact(remote), ref, commit, c)
	}
	if _, err := git(ctx, dir, "-c", "advice.detachedHead=false", "checkout", "-q", commit); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, ".gitmodules")); err == nil && o.Submodules {
		if _, err := git(ctx, dir, "submodule", "update", "-q", "--init", "--recursive", "--depth=1"); err != nil {
			return err
		}
	}
	ct, err := git(ctx, dir, "log", "-1", "--format=%ct", commit)
	if err != nil {
		return err
	}
	sec, err := strconv.ParseInt(strings.TrimSpace(string(ct)), 10, 64)
	if err != nil {
		return fmt.Errorf("git %s: commit time %q: %w", Redact(remote), ct, err)
	}
	if !o.KeepGitDir {
		if err := os.RemoveAll(filepath.Join(dir, ".git")); err != nil {
			return err
		}
	}
	return commitTimes(dir, time.Unix(sec, 0))
}

// commitTimes gives every entry under dir the commit's time, children
// before their directory so no write bumps it after.
func commitTimes(dir string, t time.Time) error {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	})
	if err != nil {
		return err
	}
	ts := unix.NsecToTimespec(t.UnixNano())
	for i := len(paths) - 1; i >= 0; i-- {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("set times of %s: %w", paths[i], err)
		}
	}
	return nil
}

// git runs git in dir, its stderr in the error. Prompts are off: a build
// never waits for a password.
func git(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=true", "LC_ALL=C")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("ADD of a git source needs the git command: %w", err)
		}
		return nil, fmt.Errorf("git %s: %w: %s", args[0], err, Redact(strings.TrimSpace(stderr.String())))
	}
	return out, nil
}

var userinfo = regexp.MustCompile(`://[^/@\s]+@`)

// Redact hides the credentials a remote URL may carry
// (https://user:token@host/…), so they reach no log or error.
func Redact(s string) string {
	return userinfo.ReplaceAllString(s, "://xxxxx@")
}
