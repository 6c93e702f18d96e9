package gc

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

	"github.com/kiln-build/kiln/internal/lock"
)

// A Lease is a running kiln's claim on what it uses: while its lock is
// held, Collect keeps every item whose pin it recorded. A lease whose lock
// is free belongs to a dead kiln and is dropped by the next Collect.
//
// On disk, under root/leases: NAME.lock (held exclusively for the lease's
// life) and NAME.pins (one pin per line, appended). Pins are appended
// under root/gc.lock held shared, and Collect holds it exclusively, so a
// pin is either seen by a running collection or added after it finished:
// a caller pins first, then checks the item exists.
type Lease struct {
	root  string
	lock  *lock.Lock
	mu    sync.Mutex
	pins  *os.File
	known map[string]bool
}

const leaseDir = "leases"

func gcLockPath(root string) string { return filepath.Join(root, "gc.lock") }

// NewLease starts a lease under root (kiln's directory).
func NewLease(ctx context.Context, root string) (*Lease, error) {
	dir := filepath.Join(root, leaseDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	name := strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rb[:])
	// Created under the shared gc lock, so a collection never sees the
	// lock file before it is held.
	gl, err := lock.Acquire(ctx, gcLockPath(root), lock.Shared)
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	defer gl.Unlock()
	l, ok, err := lock.TryAcquire(filepath.Join(dir, name+".lock"), lock.Exclusive)
	if err != nil || !ok {
		return nil, fmt.Errorf("lease %s: %v", name, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, name+".pins"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		l.Unlock()
		return nil, fmt.Errorf("lease: %w", err)
	}
	return &Lease{root: root, lock: l, pins: f, known: map[string]bool{}}, nil
}

// Pin records that this kiln uses the items named ids. A nil Lease pins
// nothing (a build with no kiln directory).
func (l *Lease) Pin(ctx context.Context, ids ...string) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, id := range ids {
		if !l.known[id] {
			b.WriteString(id + "\n")
		}
	}
	if b.Len() == 0 {
		return nil
	}
	if l.pins == nil {
		return errors.New("lease closed")
	}
	gl, err := lock.Acquire(ctx, gcLockPath(l.root), lock.Shared)
	if err != nil {
		return fmt.Errorf("pin: %w", err)
	}
	defer gl.Unlock()
	if _, err := l.pins.WriteString(b.String()); err != nil {
		return fmt.Errorf("pin: %w", err)
	}
	for _, id := range ids {
		l.known[id] = true
	}
	return nil
}

// Close ends the lease: its pins no longer keep anything.
func (l *Lease) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pins == nil {
		return nil
	}
	name := strings.TrimSuffix(l.lock.Path(), ".lock")
	l.pins.Close()
	l.pins = nil
	os.Remove(name + ".pins")
	os.Remove(name + ".lock")
	l.lock.Unlock()
	return nil
}

// livePins reads the pins of every live lease and removes dead leases'
// files. The caller holds the gc lock exclusively.
func livePins(root string) (map[string]bool, error) {
	dir := filepath.Join(root, leaseDir)
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading leases: %w", err)
	}
	pins := map[string]bool{}
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), ".lock")
		if !ok {
			if n, ok := strings.CutSuffix(de.Name(), ".pins"); ok {
				if _, err := os.Stat(filepath.Join(dir, n+".lock")); errors.Is(err, fs.ErrNotExist) {
					os.Remove(filepath.Join(dir, de.Name()))
				}
			}
			continue
		}
		base := filepath.Join(dir, name)
		l, free, err := lock.TryAcquire(base+".lock", lock.Exclusive)
		if err != nil {
			return nil, err
		}
		if free {
			// Its kiln is gone: nothing it pinned is in use.
			os.Remove(base + ".pins")
			os.Remove(base + ".lock")
			l.Unlock()
			continue
		}
		f, err := os.Open(base + ".pins")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			pins[sc.Text()] = true
		}
		f.Close()
	}
	return pins, nil
}
