package solver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/mount"
	"github.com/kiln-build/kiln/internal/snapshot"
)

// mutate runs one filesystem-changing step (RUN, COPY, ADD, WORKDIR) in a
// fresh writable snapshot of the stage and returns what the step changed
// as a layer. The snapshot is released whatever happens.
func (b *builder) mutate(ctx context.Context, s *stage, fn func(ctx context.Context, root []mount.Mount) error) (v1.Layer, error) {
	snap, err := b.snapshotter()
	if err != nil {
		return nil, err
	}
	active, err := b.prepareSnapshot(ctx, snap, s)
	if err != nil {
		return nil, fmt.Errorf("prepare root filesystem (%s snapshotter): %w", snap.Name(), err)
	}
	defer active.Release()
	if err := fn(ctx, active.Mounts()); err != nil {
		return nil, err
	}
	ch, root, err := active.Diff(ctx)
	if err != nil {
		return nil, fmt.Errorf("compute changes: %w", err)
	}
	l, err := image.WriteLayer(ctx, root, image.Changes{Paths: ch.Paths, Deleted: ch.Deleted, Opaque: ch.Opaque}, b.layerFor(s))
	if err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	if err := active.Commit(ctx, l); err != nil {
		return nil, fmt.Errorf("commit snapshot: %w", err)
	}
	return l, nil
}

// mounted adapts a step that works on a directory (COPY, WORKDIR): the
// snapshot is mounted at a temporary directory for fn, and unmounted before
// its changes are read.
func (b *builder) mounted(fn func(root string) error) func(ctx context.Context, ms []mount.Mount) error {
	return func(ctx context.Context, ms []mount.Mount) (err error) {
		if dir, ok := plainDir(ms); ok {
			return fn(dir)
		}
		target, err := os.MkdirTemp(b.tmp, "mnt-")
		if err != nil {
			return err
		}
		if err := mount.All(ms, target); err != nil {
			os.Remove(target)
			return err
		}
		defer func() {
			if uerr := mount.UnmountAll(target); uerr != nil && err == nil {
				err = uerr
			}
			os.Remove(target)
		}()
		return fn(target)
	}
}

// maxLine is the longest line tail holds: a process that prints without
// newlines (a progress bar, a binary dump) has its output passed on in
// pieces of this size instead of growing one line without bound.
const maxLine = 64 << 10

// plainDir reports whether mounts are one bind mount of a directory (the
// copy snapshotter's), which a step can work in directly: no mount, so a
// build without RUN needs no root.
func plainDir(ms []mount.Mount) (string, bool) {
	if len(ms) == 1 && ms[0].Type == "bind" {
		return ms[0].Source, true
	}
	return "", false
}

// tail keeps the last lines a process printed, for the error of a failed
// RUN, and passes each complete line on as it arrives. Each byte written is
// scanned once, and at most maxLine bytes of an unfinished line are held.
type tail struct {
	mu    sync.Mutex
	max   int
	lines []string
	buf   []byte // the unfinished line, at most maxLine bytes
	emit  func(string)
}

func newTail(max int, emit func(string)) *tail { return &tail{max: max, emit: emit} }

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			t.hold(p)
			break
		}
		t.hold(p[:i])
		t.add(string(t.buf))
		t.buf = t.buf[:0]
		p = p[i+1:]
	}
	return n, nil
}

// hold appends part of an unfinished line, passing on a full maxLine piece
// whenever one has gathered.
func (t *tail) hold(p []byte) {
	for len(t.buf)+len(p) > maxLine {
		k := maxLine - len(t.buf)
		t.buf = append(t.buf, p[:k]...)
		t.add(string(t.buf))
		t.buf = t.buf[:0]
		p = p[k:]
	}
	t.buf = append(t.buf, p...)
}

// Flush emits a last line that had no newline.
func (t *tail) Flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.buf) > 0 {
		t.add(string(t.buf))
		t.buf = t.buf[:0]
	}
}

func (t *tail) add(line string) {
	line = strings.TrimRight(line, "\r")
	if t.max > 0 && len(t.lines) == t.max {
		// Shift in place: the slice never grows past max.
		copy(t.lines, t.lines[1:])
		t.lines = t.lines[:t.max-1]
	}
	if t.max > 0 {
		t.lines = append(t.lines, line)
	}
	if t.emit != nil {
		t.emit(line)
	}
}

// Lines returns the kept lines.
func (t *tail) Lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.lines...)
}

// stageRoot mounts a finished stage's (or --from image's) root filesystem
// for reading.
func (b *builder) stageRoot(ctx context.Context, s *stage) (string, error) {
	snap, err := b.snapshotter()
	if err != nil {
		return "", err
	}
	return s.root(ctx, func(ctx context.Context, s *stage) (snapshot.Active, error) {
		return b.prepareSnapshot(ctx, snap, s)
	}, b.tmp)
}

// dropRoots unmounts every stage view at the end of a build.
func (b *builder) dropRoots() {
	for _, s := range b.stages {
		s.dropRoot()
	}
	b.imagesMu.Lock()
	defer b.imagesMu.Unlock()
	for _, s := range b.images {
		s.dropRoot()
	}
}
