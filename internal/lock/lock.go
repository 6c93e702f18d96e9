package lock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Mode is how a lock is held.
type Mode int

const (
	// Shared locks may be held by many holders at once.
	Shared Mode = iota
	// Exclusive locks exclude every other holder, shared or exclusive.
	Exclusive
)

func (m Mode) String() string {
	if m == Exclusive {
		return "exclusive"
	}
	return "shared"
}

func (m Mode) how() int {
	if m == Exclusive {
		return unix.LOCK_EX
	}
	return unix.LOCK_SH
}

// Backoff bounds for a blocked Acquire: the first retry comes quickly (most
// waits are short), later ones at most maxPoll apart.
const (
	minPoll = time.Millisecond
	maxPoll = 50 * time.Millisecond
)

// Lock is a held lock. Unlock releases it; a nil *Lock unlocks as a no-op.
type Lock struct {
	f    *os.File
	path string
}

// Path is the lock file's name.
func (l *Lock) Path() string { return l.path }

// Stale reports whether the lock file was removed or replaced since it
// was opened: the lock then guards nothing another process can find. A
// holder that creates a lock inside a directory which others may remove
// checks this after locking.
func (l *Lock) Stale() bool {
	if l == nil || l.f == nil {
		return true
	}
	held, err := l.f.Stat()
	if err != nil {
		return true
	}
	now, err := os.Stat(l.path)
	return err != nil || !os.SameFile(held, now)
}

// Unlock releases the lock (by closing its file). It is safe to call more
// than once.
func (l *Lock) Unlock() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Close()
	l.f = nil
}

// Acquire takes the lock on path (created if missing, mode 0644) in mode,
// waiting for other holders until ctx is done.
func Acquire(ctx context.Context, path string, mode Mode) (*Lock, error) {
	f, err := open(path)
	if err != nil {
		return nil, err
	}
	wait := minPoll
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		ok, err := try(f, mode)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s lock %s: %w", mode, path, err)
		}
		if ok {
			return &Lock{f: f, path: path}, nil
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for %s lock %s: %w", mode, path, context.Cause(ctx))
		case <-timer.C:
		}
		wait = min(2*wait, maxPoll)
	}
}

// TryAcquire takes the lock on path (created if missing) in mode if no
// other holder excludes it; ok is false, with no error, when one does.
func TryAcquire(path string, mode Mode) (l *Lock, ok bool, err error) {
	f, err := open(path)
	if err != nil {
		return nil, false, err
	}
	ok, err = try(f, mode)
	if err != nil || !ok {
		f.Close()
		if err != nil {
			return nil, false, fmt.Errorf("%s lock %s: %w", mode, path, err)
		}
		return nil, false, nil
	}
	return &Lock{f: f, path: path}, true, nil
}

func open(path string) (*os.File, error) {
	// os.OpenFile sets O_CLOEXEC: children never inherit the lock.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock: %w", err)
	}
	return f, nil
}

// try makes one non-blocking attempt; EINTR counts as "not yet".
func try(f *os.File, mode Mode) (bool, error) {
	err := unix.Flock(int(f.Fd()), mode.how()|unix.LOCK_NB)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EWOULDBLOCK), errors.Is(err, unix.EINTR):
		return false, nil
	default:
		return false, err
	}
}
