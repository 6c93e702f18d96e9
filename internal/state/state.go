package state

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kiln-build/kiln/internal/executor"
	"github.com/kiln-build/kiln/internal/lock"
	"github.com/kiln-build/kiln/internal/mount"
)

// Names inside a build directory.
const (
	lockName    = "lock"    // flock: exclusive for the owner's whole life
	ownerName   = "owner"   // the owner's pid, for people reading the directory
	partialName = "partial" // lines "LOCK\tDIR": partial files this build may leave elsewhere
	tempName    = "temp"    // the path of the build's temp dir (TempDir)
	ownedName   = "owned"   // glob patterns, one a line: this build's own files elsewhere
	snapName    = "a"       // active snapshots; short: deep layer paths must stay under PATH_MAX
	memName     = "mem"     // in the temp dir, a tmpfs: secrets, executor bundles, runc's state
)

// TempPrefix starts the name of every build's temp dir (in the system's
// temp dir, or Begin's tempParent).
const TempPrefix = "kiln-build-"

// memOptions size the build's tmpfs. It holds small files only (secrets,
// config.json, hosts, runc state); pages are used only when written.
const memOptions = "mode=0700,size=64m,nr_inodes=16k"

// cleanupTimeout bounds one build directory's cleanup (runc delete and
// unmounts), so a wedged mount cannot hang every later kiln command.
const cleanupTimeout = 30 * time.Second

// Build is one kiln command's own directory, ROOT/run/ID, locked
// exclusively until Close.
type Build struct {
	id, dir string
	temp    string
	held    *lock.Lock

	mu     sync.Mutex
	mem    string // mounted tmpfs, "" until Mem
	closed bool
	owned  map[string]bool
}

// Begin creates and locks a new build directory under root, and the
// build's temp dir under tempParent ("" is the system's temp dir). It never
// returns a directory a concurrent Sweep may take: the lock is taken before
// anything is put in it, and checked to still name the directory's lock
// file afterwards.
func Begin(root, tempParent string) (*Build, error) {
	root, err := canonical(root)
	if err != nil {
		return nil, err
	}
	run := filepath.Join(root, "run")
	if err := os.MkdirAll(run, 0o700); err != nil {
		return nil, fmt.Errorf("create build directory: %w", err)
	}
	if tempParent == "" {
		tempParent = os.TempDir()
	}
	for range 10 {
		var idb [4]byte
		_, _ = rand.Read(idb[:])
		id := hex.EncodeToString(idb[:])
		dir := filepath.Join(run, id)
		if err := os.Mkdir(dir, 0o700); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			return nil, fmt.Errorf("create build directory: %w", err)
		}
		held, ok, err := lock.TryAcquire(filepath.Join(dir, lockName), lock.Exclusive)
		if errors.Is(err, fs.ErrNotExist) || (err == nil && !ok) {
			continue // a sweep took the fresh directory for a dead one's
		}
		if err != nil {
			return nil, fmt.Errorf("lock build directory: %w", err)
		}
		if held.Stale() {
			held.Unlock()
			continue
		}
		b := &Build{id: id, dir: dir, held: held}
		if err := os.WriteFile(filepath.Join(dir, ownerName), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
			b.Close()
			return nil, fmt.Errorf("create build directory: %w", err)
		}
		if err := os.Mkdir(filepath.Join(dir, snapName), 0o700); err != nil {
			b.Close()
			return nil, fmt.Errorf("create build directory: %w", err)
		}
		// The temp dir is recorded before it exists, so a sweep finds it
		// whenever it does.
		temp, err := filepath.Abs(filepath.Join(tempParent, TempPrefix+id))
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, tempName), []byte(temp), 0o600)
		}
		if err == nil {
			err = os.Mkdir(temp, 0o700)
		}
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("create build temp directory: %w", err)
		}
		b.temp = temp
		return b, nil
	}
	return nil, errors.New("create build directory: no free name after 10 tries")
}

// ID names the build; it is unique among live builds under one root.
func (b *Build) ID() string { return b.id }

// Dir is the build directory.
func (b *Build) Dir() string { return b.dir }

// TempDir is for large transient files on disk: root filesystem mount
// points, layer blobs being written, private cache mounts. It lives in the
// system's temp dir (kiln-build-ID), recorded in the build directory: what
// a build holds while it runs is not part of kiln's stored, bounded state.
func (b *Build) TempDir() string { return b.temp }

// SnapshotDir is for the build's active (writable) snapshots. It is on the
// same filesystem as root, so a committed snapshot can be renamed into
// kiln's shared snapshot store.
func (b *Build) SnapshotDir() string { return filepath.Join(b.dir, snapName) }

// Mem returns a tmpfs private to this build, mounting it on first use.
// What must never reach a persistent disk lives here: secrets, and the
// executor's bundles (runc's config.json holds env= secrets). A dead
// build's tmpfs is unmounted by the next Sweep, and its pages are gone.
func (b *Build) Mem() (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return "", errors.New("build directory already closed")
	}
	if b.mem != "" {
		return b.mem, nil
	}
	dir := filepath.Join(b.temp, memName)
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("build tmpfs: %w", err)
	}
	m := mount.Mount{Type: "tmpfs", Source: "kiln", Options: []string{"nosuid", "nodev", memOptions}}
	if err := m.Mount(dir); err != nil {
		return "", fmt.Errorf("build tmpfs (secrets and RUN state are kept in memory only; mounting needs root): %w", err)
	}
	b.mem = dir
	return dir, nil
}

// RuncRoot is the runc state root for this build's containers (on Mem),
// so a sweep finds a dead build's containers and nothing else.
func RuncRoot(mem string) string { return filepath.Join(mem, "runc") }

// RecordPartial notes that this build may leave partial files in dir,
// written by writers that each hold lockPath shared (a type=local cache
// dest: its tmp directory and lock). Once this build is dead, a Sweep
// empties dir when it can take lockPath exclusively, i.e. when no writer
// at all is active there.
func (b *Build) RecordPartial(lockPath, dir string) error {
	lockPath, err := filepath.Abs(lockPath)
	if err == nil {
		dir, err = filepath.Abs(dir)
	}
	if err != nil {
		return fmt.Errorf("record partial files: %w", err)
	}
	if strings.ContainsAny(lockPath+dir, "\t\n") {
		return nil // not representable; the store's own prune still reaches it
	}
	if err := appendLine(filepath.Join(b.dir, partialName), lockPath+"\t"+dir); err != nil {
		return fmt.Errorf("record partial files: %w", err)
	}
	return nil
}

// RecordOwned notes that paths matching pattern (a filepath.Match glob
// whose last element contains the build's ID, e.g. DIR/.new-ID-*) are this
// build's own temporary files outside its directories: they must sit
// where they will be renamed (a cache mount being seeded). Close and, after
// a crash, Sweep remove whatever matches.
func (b *Build) RecordOwned(pattern string) error {
	pattern, err := filepath.Abs(pattern)
	if err != nil {
		return fmt.Errorf("record owned files: %w", err)
	}
	if !ownedBy(pattern, b.id) {
		return fmt.Errorf("record owned files %q: the name must carry the build id %s", pattern, b.id)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.owned[pattern] {
		return nil
	}
	if err := appendLine(filepath.Join(b.dir, ownedName), pattern); err != nil {
		return fmt.Errorf("record owned files: %w", err)
	}
	if b.owned == nil {
		b.owned = map[string]bool{}
	}
	b.owned[pattern] = true
	return nil
}

// ownedBy reports whether pattern names only files of build id.
func ownedBy(pattern, id string) bool {
	_, err := filepath.Match(pattern, "")
	return err == nil && !strings.ContainsAny(pattern, "\n") && strings.Contains(filepath.Base(pattern), id)
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(line + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close removes everything the build left under its directory (as a
// Sweep would after a crash, partial files elsewhere included), then the
// directory and its lock. It is safe to call twice.
func (b *Build) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	err := clean(ctx, b.dir)
	b.held.Unlock()
	return err
}

// Live returns the directories of the builds running under root: those
// whose lock a live kiln holds. Package gc reads the pins they record, so
// nothing a running build uses is collected.
func Live(root string) ([]string, error) {
	run := filepath.Join(root, "run")
	des, err := os.ReadDir(run)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("running builds: %w", err)
	}
	var live []string
	for _, de := range des {
		if !de.IsDir() {
			continue
		}
		dir := filepath.Join(run, de.Name())
		held, free, err := lock.TryAcquire(filepath.Join(dir, lockName), lock.Exclusive)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("running builds: %w", err)
		}
		if free {
			held.Unlock() // dead: the next sweep removes it
			continue
		}
		live = append(live, dir)
	}
	return live, nil
}

// Swept says what a Sweep removed.
type Swept struct {
	Builds int // dead builds' directories removed
	Mounts int // mounts under them unmounted
}

// Sweep removes what dead kiln commands left under root: for every build
// directory whose lock is free, it deletes the build's runc containers
// (killing their processes), empties the partial-file directories the
// build recorded when no writer holds them, unmounts every mount under the
// directory (deepest first) and removes it. Directories of live builds
// are never touched. Errors are collected; the sweep goes on.
func Sweep(ctx context.Context, root string) (Swept, error) {
	var sw Swept
	if _, err := os.Stat(root); errors.Is(err, fs.ErrNotExist) {
		return sw, nil // nothing ever ran here
	}
	root, err := canonical(root)
	if err != nil {
		return sw, err
	}
	run := filepath.Join(root, "run")
	des, err := os.ReadDir(run)
	if errors.Is(err, fs.ErrNotExist) {
		return sw, nil
	}
	if err != nil {
		return sw, fmt.Errorf("sweep %s: %w", run, err)
	}
	var errs []error
	for _, de := range des {
		if !de.IsDir() {
			continue
		}
		if err := ctx.Err(); err != nil {
			return sw, err
		}
		dir := filepath.Join(run, de.Name())
		held, ok, err := lock.TryAcquire(filepath.Join(dir, lockName), lock.Exclusive)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed by a concurrent sweep
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", dir, err))
			continue
		}
		if !ok {
			continue // a live kiln owns it
		}
		if held.Stale() {
			held.Unlock()
			continue
		}
		mps, _ := mount.MountPointsUnder(dir)
		if temp := recordedTemp(dir); temp != "" {
			more, _ := mount.MountPointsUnder(temp)
			mps = append(mps, more...)
		}
		cctx, cancel := context.WithTimeout(ctx, cleanupTimeout)
		err = clean(cctx, dir)
		cancel()
		held.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("sweep %s: %w", dir, err))
			continue
		}
		sw.Builds++
		sw.Mounts += len(mps)
	}
	return sw, errors.Join(errs...)
}

// clean is one build directory's teardown, for its owner's Close and for
// a sweep alike; the caller holds the directory's lock. Order matters:
// containers first (their state is on the tmpfs, and they keep mounts
// busy), then partial files, then mounts, and the tree last, never through
// a mount that could not be removed.
func clean(ctx context.Context, dir string) error {
	var errs []error
	temp := recordedTemp(dir)
	if temp != "" {
		if err := executor.RemoveContainers(ctx, RuncRoot(filepath.Join(temp, memName))); err != nil {
			errs = append(errs, err)
		}
	}
	if err := cleanPartial(filepath.Join(dir, partialName)); err != nil {
		errs = append(errs, err)
	}
	if err := cleanOwned(filepath.Join(dir, ownedName), filepath.Base(dir)); err != nil {
		errs = append(errs, err)
	}
	// The temp dir first: the build directory records where it is.
	if temp != "" {
		if err := removeTree(temp); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		if err := removeTree(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeTree unmounts everything under dir, deepest first, and removes
// it, never through a mount that stayed.
func removeTree(dir string) error {
	var errs []error
	if err := mount.UnmountAll(dir); err != nil {
		errs = append(errs, err)
	}
	left, err := mount.MountPointsUnder(dir)
	if err != nil {
		errs = append(errs, err)
	} else if len(left) > 0 {
		errs = append(errs, fmt.Errorf("%d mounts could not be removed (first: %s); keeping %s", len(left), left[0], dir))
	} else if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	return errors.Join(errs...)
}

// recordedTemp reads the temp dir a build directory names, if it is one
// kiln made for that build (named after its id), else "".
func recordedTemp(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, tempName))
	if err != nil {
		return ""
	}
	temp := string(b)
	if !filepath.IsAbs(temp) || filepath.Base(temp) != TempPrefix+filepath.Base(dir) {
		return ""
	}
	return temp
}

// canonical makes root absolute with symlinks resolved, as mountinfo names
// mount points (created if missing).
func canonical(root string) (string, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("kiln state directory: %w", err)
	}
	abs, err := filepath.Abs(root)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", fmt.Errorf("kiln state directory: %w", err)
	}
	return abs, nil
}

// cleanOwned removes what the recorded patterns of build id match.
func cleanOwned(list, id string) error {
	b, err := os.ReadFile(list)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, pattern := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if pattern == "" || !filepath.IsAbs(pattern) || !ownedBy(pattern, id) {
			continue
		}
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			if err := removeTree(m); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// cleanPartial empties each recorded directory whose lock is free.
func cleanPartial(list string) error {
	f, err := os.Open(list)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	var errs []error
	done := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lockPath, dir, ok := strings.Cut(sc.Text(), "\t")
		if !ok || done[dir] {
			continue
		}
		done[dir] = true
		held, ok, err := lock.TryAcquire(lockPath, lock.Exclusive)
		if errors.Is(err, fs.ErrNotExist) {
			continue // the store is gone
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue // a writer is active; its own prune or a later sweep will do
		}
		des, err := os.ReadDir(dir)
		for _, de := range des {
			if rerr := os.RemoveAll(filepath.Join(dir, de.Name())); rerr != nil {
				errs = append(errs, rerr)
			}
		}
		held.Unlock()
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
