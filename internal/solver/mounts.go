package solver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"

	"github.com/kiln-build/kiln/internal/executor"
	"github.com/kiln-build/kiln/internal/fileop"
	"github.com/kiln-build/kiln/internal/lock"
)

// Secret is one --secret: a file to read, or a value taken from the
// environment at the CLI edge. Its content never reaches a layer, a cache
// key, a log or a report.
type Secret struct {
	File  string
	Value []byte
}

// runMounts turns RUN --mount flags into executor mounts, with BuildKit's
// semantics. Secrets requested as environment variables come back as env
// entries for the process only. cleanup releases cache locks and removes
// temporary files; call it after the process ended.
func (b *builder) runMounts(ctx context.Context, s *stage, c *instructions.RunCommand) (ms []executor.Mount, env []string, cleanup func(), err error) {
	var undo []func()
	cleanup = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	wd := s.cfg.Config.WorkingDir
	if wd == "" {
		wd = "/"
	}
	sshMounts := 0
	for _, m := range instructions.GetMounts(c) {
		target := m.Target
		if target != "" && !path.IsAbs(target) {
			target = path.Join(wd, target)
		}
		if m.Type != instructions.MountTypeSecret && m.Type != instructions.MountTypeSSH && path.Clean(target) == "/" {
			return nil, nil, cleanup, fmt.Errorf("invalid mount target %q", m.Target)
		}
		switch m.Type {
		case instructions.MountTypeBind:
			mnt, done, err := b.bindMount(ctx, m, target)
			undo = append(undo, done)
			if err != nil {
				return nil, nil, cleanup, err
			}
			ms = append(ms, mnt)
		case instructions.MountTypeCache:
			mnt, done, err := b.cacheMount(ctx, m, target)
			undo = append(undo, done)
			if err != nil {
				return nil, nil, cleanup, err
			}
			ms = append(ms, mnt)
		case instructions.MountTypeTmpfs:
			var opts []string
			if m.SizeLimit > 0 {
				opts = append(opts, fmt.Sprintf("size=%d", m.SizeLimit))
			}
			ms = append(ms, executor.Mount{Destination: target, Type: "tmpfs", Source: "tmpfs", Options: opts})
		case instructions.MountTypeSecret:
			mnt, e, ok, err := b.secretMount(m, target)
			if err != nil {
				return nil, nil, cleanup, err
			}
			env = append(env, e...)
			if ok {
				ms = append(ms, mnt)
			}
		case instructions.MountTypeSSH:
			// As BuildKit: the Nth ssh mount defaults to ssh_agent.N, and
			// the first one's target is SSH_AUTH_SOCK unless set.
			if target == "" {
				target = fmt.Sprintf("/run/buildkit/ssh_agent.%d", sshMounts)
			}
			if _, set := s.vars.Get("SSH_AUTH_SOCK"); sshMounts == 0 && !set {
				env = append(env, "SSH_AUTH_SOCK="+target)
			}
			sshMounts++
			mnt, done, ok, err := b.sshMount(m, target)
			undo = append(undo, done)
			if err != nil {
				return nil, nil, cleanup, err
			}
			if ok {
				ms = append(ms, mnt)
			}
		default:
			return nil, nil, cleanup, fmt.Errorf("RUN --mount=type=%s: unknown mount type", m.Type)
		}
	}
	return ms, env, cleanup, nil
}

// mountSource resolves a mount's from= and source= to a path on disk,
// never outside the source's root. from="" is the build context.
func (b *builder) mountSource(ctx context.Context, from, source string) (root, p string, err error) {
	if from == "" {
		root = b.bctx.Root()
	} else {
		var src *stage
		if j, ok := b.df.StageIndex(from); ok {
			src = b.stages[j]
		} else if src, err = b.imageSource(ctx, from); err != nil {
			return "", "", err
		}
		if root, err = b.stageRoot(ctx, src); err != nil {
			return "", "", err
		}
	}
	p, err = securejoin.SecureJoin(root, source)
	if err != nil {
		return "", "", fmt.Errorf("mount source %q: %w", source, err)
	}
	if _, err := os.Lstat(p); err != nil {
		return "", "", fmt.Errorf("mount source %q: %w", source, fileop.ErrNotFound)
	}
	return root, p, nil
}

// bindMount is type=bind: read-only unless rw, and writes to an rw mount
// are discarded (it is a private copy). Context files hidden by
// .dockerignore are not visible through it.
func (b *builder) bindMount(ctx context.Context, m *instructions.Mount, target string) (executor.Mount, func(), error) {
	nothing := func() {}
	root, src, err := b.mountSource(ctx, m.From, m.Source)
	if err != nil {
		return executor.Mount{}, nothing, err
	}
	filtered := m.From == "" && len(b.bctx.Patterns()) > 0
	if m.ReadOnly && !filtered {
		return executor.Mount{Destination: target, Type: "bind", Source: src, Options: []string{"rbind", "ro"}}, nothing, nil
	}
	// A private copy: the context as the build sees it, or a scratch copy
	// whose writes vanish with it.
	dir, err := os.MkdirTemp(b.tmp, "bind-")
	if err != nil {
		return executor.Mount{}, nothing, err
	}
	done := func() { os.RemoveAll(dir) }
	tree := fileop.Tree{Root: root}
	if m.From == "" {
		tree.Exclude = b.bctx.Excluded
	}
	rel, _ := filepath.Rel(root, src)
	fi, err := os.Stat(src)
	if err != nil {
		return executor.Mount{}, done, err
	}
	dest, bindSrc := "/", dir
	if !fi.IsDir() {
		dest = "/" + filepath.Base(src)
		bindSrc = filepath.Join(dir, filepath.Base(src))
	}
	if _, err := (fileop.Copy{Src: tree, Sources: []string{"/" + filepath.ToSlash(rel)}, Dest: dest}).Apply(ctx, dir); err != nil {
		return executor.Mount{}, done, fmt.Errorf("bind mount source %q: %w", m.Source, err)
	}
	opts := []string{"rbind", "rw"}
	if m.ReadOnly {
		opts[1] = "ro"
	}
	return executor.Mount{Destination: target, Type: "bind", Source: bindSrc, Options: opts}, done, nil
}

// cacheMount is type=cache: a directory under kiln's cache directory that
// outlives builds, keyed by id (default: the target). sharing=locked
// serialises users; private gives a concurrent user its own empty
// directory.
func (b *builder) cacheMount(ctx context.Context, m *instructions.Mount, target string) (executor.Mount, func(), error) {
	nothing := func() {}
	id, dir := b.cacheMountDir(m, target)
	if err := os.MkdirAll(b.mountsDir, 0o700); err != nil {
		return executor.Mount{}, nothing, fmt.Errorf("cache mount %s: %w", id, err)
	}
	var (
		held *lock.Lock
		err  error
	)
	switch m.CacheSharing {
	case instructions.MountSharingLocked:
		if held, err = lock.Acquire(ctx, dir+".lock", lock.Exclusive); err != nil {
			return executor.Mount{}, nothing, fmt.Errorf("cache mount %s: %w", id, err)
		}
	case instructions.MountSharingPrivate:
		var ok bool
		if held, ok, err = lock.TryAcquire(dir+".lock", lock.Exclusive); err != nil {
			return executor.Mount{}, nothing, fmt.Errorf("cache mount %s: %w", id, err)
		}
		if !ok {
			tmp, err := os.MkdirTemp(b.tmp, "cache-private-")
			if err != nil {
				return executor.Mount{}, nothing, err
			}
			if err := setOwnerMode(tmp, m, 0o755); err != nil {
				return executor.Mount{}, nothing, err
			}
			return executor.Mount{Destination: target, Type: "bind", Source: tmp, Options: []string{"rbind", "rw"}}, func() { os.RemoveAll(tmp) }, nil
		}
	default: // shared
		if held, err = lock.Acquire(ctx, dir+".lock", lock.Shared); err != nil {
			return executor.Mount{}, nothing, fmt.Errorf("cache mount %s: %w", id, err)
		}
	}
	release := held.Unlock
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := b.seedCache(ctx, m, id, dir); err != nil {
			release()
			return executor.Mount{}, nothing, fmt.Errorf("cache mount %s: %w", id, err)
		}
	}
	// The directory's mtime is its last use, for eviction (disk.go).
	now := time.Now()
	_ = os.Chtimes(dir, now, now)
	b.mountUsed(id, dir)
	return executor.Mount{Destination: target, Type: "bind", Source: dir, Options: []string{"rbind", "rw"}}, release, nil
}

// cacheMountDir returns a cache mount's id (default: its target) and the
// directory that holds its contents.
func (b *builder) cacheMountDir(m *instructions.Mount, target string) (id, dir string) {
	id = m.CacheID
	if id == "" {
		id = path.Clean(target)
	}
	sum := sha256.Sum256([]byte(id))
	return id, filepath.Join(b.mountsDir, hex.EncodeToString(sum[:8]))
}

// seedCache creates a cache directory atomically: empty with the mount's
// mode and owner, holding from=/source= content, or — on a fresh runner —
// restored from the contents an earlier build exported to a --cache-from.
func (b *builder) seedCache(ctx context.Context, m *instructions.Mount, id, dir string) error {
	if m.From == "" {
		// A restore the step's miss started in the background: wait for
		// it rather than downloading the contents a second time.
		pre, ok, err := b.prefetchedMount(ctx, id)
		if err != nil {
			return err
		}
		if ok {
			return commitDir(pre, dir)
		}
	}
	tmp, err := b.seedDir(dir)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if m.From == "" && !b.prefetchTried(id) {
		restored, err := b.restoreMount(ctx, id, tmp, mountStatePath(dir))
		if err != nil {
			return err
		}
		if restored {
			return commitDir(tmp, dir)
		}
	}
	if m.From != "" {
		root, src, err := b.mountSource(ctx, m.From, m.Source)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, src)
		if _, err := (fileop.Copy{Src: fileop.Tree{Root: root}, Sources: []string{"/" + filepath.ToSlash(rel)}, Dest: "/"}).Apply(ctx, tmp); err != nil {
			return err
		}
	}
	if err := setOwnerMode(tmp, m, 0o755); err != nil {
		return err
	}
	return commitDir(tmp, dir)
}

// commitDir moves a seeded directory into place. Two stages (or two kiln
// processes) seeding one cache id under a shared lock race here: when dir
// appeared meanwhile (rename fails with EEXIST or ENOTEMPTY), the other
// seed won and its directory is used; tmp is discarded by the caller.
func commitDir(tmp, dir string) error {
	err := os.Rename(tmp, dir)
	if err == nil || !errors.Is(err, fs.ErrExist) {
		return err
	}
	if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
		return nil
	}
	return err
}

// setOwnerMode applies a mount's uid, gid and mode (default 0:0 and mode).
func setOwnerMode(dir string, m *instructions.Mount, mode fs.FileMode) error {
	uid, gid := 0, 0
	if m.UID != nil {
		uid = int(*m.UID)
	}
	if m.GID != nil {
		gid = int(*m.GID)
	}
	if m.Mode != nil {
		mode = fs.FileMode(*m.Mode)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		return err
	}
	return os.Chmod(dir, mode)
}

// secretMount is type=secret: the value as a read-only file (default
// /run/secrets/<id>, mode 0400) and/or an environment variable. A missing
// secret is skipped unless required.
func (b *builder) secretMount(m *instructions.Mount, target string) (executor.Mount, []string, bool, error) {
	id := m.CacheID
	if m.Source != "" {
		id = m.Source
	}
	if id == "" {
		if target == "" {
			return executor.Mount{}, nil, false, errors.New("secret mount: one of id, source, target required")
		}
		id = path.Base(target)
	}
	sec, ok := b.opts.Secrets[id]
	if !ok {
		if m.Required {
			return executor.Mount{}, nil, false, fmt.Errorf("secret %q is required but was not provided (use --secret id=%s,src=FILE or env=VAR)", id, id)
		}
		return executor.Mount{}, nil, false, nil
	}
	value := sec.Value
	if sec.File != "" {
		v, err := os.ReadFile(sec.File)
		if err != nil {
			return executor.Mount{}, nil, false, fmt.Errorf("secret %q: read its file: %w", id, err)
		}
		value = v
	}
	var env []string
	if m.Env != nil {
		name := *m.Env
		if name == "" {
			name = id
		}
		env = append(env, name+"="+string(value))
		if target == "" {
			return executor.Mount{}, env, false, nil
		}
	}
	if target == "" {
		target = "/run/secrets/" + path.Base(id)
	}
	dir, err := b.secretsDir()
	if err != nil {
		return executor.Mount{}, nil, false, fmt.Errorf("secret %q: %w", id, err)
	}
	f, err := os.CreateTemp(dir, "secret-")
	if err != nil {
		return executor.Mount{}, nil, false, err
	}
	name := f.Name()
	_, werr := f.Write(value)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return executor.Mount{}, nil, false, fmt.Errorf("secret %q: %w", id, werr)
	}
	if err := setOwnerMode(name, m, 0o400); err != nil {
		return executor.Mount{}, nil, false, err
	}
	return executor.Mount{Destination: target, Type: "bind", Source: name, Options: []string{"rbind", "ro"}}, env, true, nil
}

// secretsDir holds secret files while the build runs: on the build's
// tmpfs, private to root, so a secret never reaches a persistent disk and
// is gone when the build ends, or, after a crash, with the next sweep.
func (b *builder) secretsDir() (string, error) {
	mem, err := b.state.Mem()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(mem, "secrets")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, nil
}

// scriptMount mounts a "#!" RUN heredoc read-only at /dev/pipes/<name>.
func (b *builder) scriptMount(sc *inlineScript) (executor.Mount, error) {
	dir, err := os.MkdirTemp(b.tmp, "pipes-")
	if err != nil {
		return executor.Mount{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, sc.name), sc.data, 0o755); err != nil {
		return executor.Mount{}, err
	}
	return executor.Mount{Destination: pipesDir, Type: "bind", Source: dir, Options: []string{"rbind", "ro"}}, nil
}
