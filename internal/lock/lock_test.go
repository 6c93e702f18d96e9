package lock

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"
)

func TestSharedHoldersCoexistExclusiveExcludes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	ctx := context.Background()
	a, err := Acquire(ctx, p, Shared)
	if err != nil {
		t.Fatal(err)
	}
	b, ok, err := TryAcquire(p, Shared)
	if err != nil || !ok {
		t.Fatalf("second shared holder: ok=%v err=%v", ok, err)
	}
	if _, ok, err := TryAcquire(p, Exclusive); err != nil || ok {
		t.Fatalf("exclusive while shared held: ok=%v err=%v", ok, err)
	}
	a.Unlock()
	if _, ok, _ := TryAcquire(p, Exclusive); ok {
		t.Fatal("exclusive while one shared holder remains")
	}
	b.Unlock()
	b.Unlock() // twice is fine
	x, ok, err := TryAcquire(p, Exclusive)
	if err != nil || !ok {
		t.Fatalf("exclusive once free: ok=%v err=%v", ok, err)
	}
	if _, ok, _ := TryAcquire(p, Shared); ok {
		t.Fatal("shared while exclusive held")
	}
	x.Unlock()
	var nilLock *Lock
	nilLock.Unlock()
}

func TestAcquireWaitsForRelease(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	held, err := Acquire(context.Background(), p, Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		held.Unlock()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	l, err := Acquire(ctx, p, Shared)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Fatalf("acquired after %v, before the holder released", d)
	}
}

// The old helper ran a blocking flock in a goroutine: on cancel the
// goroutine stayed blocked (and later took the lock nobody would release).
func TestCancelledAcquireLeavesNothingBehind(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	held, err := Acquire(context.Background(), p, Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		start := time.Now()
		_, err := Acquire(ctx, p, Exclusive)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want deadline exceeded", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("cancel took %v", d)
		}
	}
	// A goroutine of the runtime or the test framework may come and go
	// meanwhile; a waiter left blocked in flock never goes, so wait a
	// little for the count to settle before calling it a leak.
	after := runtime.NumGoroutine()
	for deadline := time.Now().Add(2 * time.Second); after > before && time.Now().Before(deadline); after = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond)
	}
	if after > before {
		t.Fatalf("goroutines: %d before, %d after 20 cancelled waits", before, after)
	}
	held.Unlock()
	// Nobody took the lock behind our back.
	l, ok, err := TryAcquire(p, Exclusive)
	if err != nil || !ok {
		t.Fatalf("lock not free after cancelled waiters: ok=%v err=%v", ok, err)
	}
	l.Unlock()
}

func TestAcquireFailsOnUnopenablePath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing-dir", "lock")
	if _, err := Acquire(context.Background(), p, Shared); err == nil {
		t.Fatal("no error for a lock in a missing directory")
	}
	if _, _, err := TryAcquire(p, Shared); err == nil {
		t.Fatal("no error for a lock in a missing directory")
	}
}

// A holder killed with SIGKILL releases its lock: the kernel drops it with
// the last file descriptor. The crash sweep depends on it.
func TestKilledHolderReleases(t *testing.T) {
	if p := os.Getenv("KILN_LOCK_HOLD"); p != "" {
		l, err := Acquire(context.Background(), p, Exclusive)
		if err != nil {
			os.Exit(3)
		}
		_ = l
		os.Stdout.WriteString("held\n")
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	p := filepath.Join(t.TempDir(), "lock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledHolderReleases$")
	cmd.Env = append(os.Environ(), "KILN_LOCK_HOLD="+p)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := out.Read(buf); err != nil || string(buf) != "held\n" {
		t.Fatalf("child: %q %v", buf, err)
	}
	if _, ok, _ := TryAcquire(p, Shared); ok {
		t.Fatal("lock free while the child holds it")
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	l, ok, err := TryAcquire(p, Exclusive)
	if err != nil || !ok {
		t.Fatalf("lock of a killed holder not free: ok=%v err=%v", ok, err)
	}
	l.Unlock()
}

func TestStale(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	l, err := Acquire(context.Background(), p, Exclusive)
	if err != nil {
		t.Fatal(err)
	}
	if l.Stale() {
		t.Fatal("fresh lock reported stale")
	}
	os.Remove(p)
	if !l.Stale() {
		t.Fatal("removed lock file not reported stale")
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if !l.Stale() {
		t.Fatal("replaced lock file not reported stale")
	}
	l.Unlock()
	if !l.Stale() {
		t.Fatal("unlocked lock not reported stale")
	}
}
