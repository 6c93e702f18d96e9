package gc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/kiln-build/kiln/internal/lock"
)

// A Lease is a running kiln's claim on what it uses: the pins it records
// in its own build directory (package state: ROOT/run/ID, locked by the
// build for its whole life). While that directory counts as live, Collect
// keeps every item whose pin it recorded; a dead build's pins keep
// nothing, and its directory is swept with the rest of it.
//
// Pins are appended to DIR/pins under root/gc.lock held shared, and
// Collect holds it exclusively, so a pin is either seen by a running
// collection or added after it finished: a caller pins first, then checks
// the item exists.
type Lease struct {
	root  string
	mu    sync.Mutex
	pins  *os.File
	known map[string]bool
}

const pinsName = "pins"

func gcLockPath(root string) string { return filepath.Join(root, "gc.lock") }

// NewLease starts a lease for the build owning dir under kiln's root.
func NewLease(root, dir string) (*Lease, error) {
	f, err := os.OpenFile(filepath.Join(dir, pinsName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lease: %w", err)
	}
	return &Lease{root: root, pins: f, known: map[string]bool{}}, nil
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
		return errors.New("pin: lease closed")
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

// Close ends the lease. Its pins file stays until the build directory is
// removed; call Close before that.
func (l *Lease) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pins == nil {
		return nil
	}
	err := l.pins.Close()
	l.pins = nil
	return err
}

// readPins reads the pins recorded in the live build directories dirs.
func readPins(dirs []string) map[string]bool {
	pins := map[string]bool{}
	for _, dir := range dirs {
		f, err := os.Open(filepath.Join(dir, pinsName))
		if err != nil {
			continue // no pins yet, or gone with its build
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			pins[sc.Text()] = true
		}
		f.Close()
	}
	return pins
}
