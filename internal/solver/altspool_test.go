package solver

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestSpool(t *testing.T) {
	t.Run("the reader follows the writer and ends at a nil verdict", func(t *testing.T) {
		sp, err := newSpool(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer sp.release()
		want := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
		got := make(chan []byte)
		go func() {
			b, err := io.ReadAll(sp.reader(context.Background()))
			if err != nil {
				t.Error(err)
			}
			got <- b
		}()
		// Written in pieces, the reader waiting between them.
		for i := 0; i < len(want); i += 100_000 {
			if _, err := sp.Write(want[i:min(i+100_000, len(want))]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		select {
		case <-got:
			t.Fatal("the reader ended before the verdict")
		case <-time.After(50 * time.Millisecond):
		}
		_ = sp.CloseWithError(nil)
		if b := <-got; !bytes.Equal(b, want) {
			t.Errorf("read %d bytes, not the %d written", len(b), len(want))
		}
	})

	t.Run("a failed tar fails the reader after what was written", func(t *testing.T) {
		sp, err := newSpool(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer sp.release()
		_, _ = sp.Write([]byte("partial"))
		bad := errors.New("diffID mismatch")
		_ = sp.CloseWithError(bad)
		b, err := io.ReadAll(sp.reader(context.Background()))
		if !errors.Is(err, bad) || string(b) != "partial" {
			t.Errorf("read %q, %v; want \"partial\" then the verdict", b, err)
		}
	})

	t.Run("a cancelled reader stops waiting", func(t *testing.T) {
		sp, err := newSpool(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer sp.release()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() {
			_, err := io.ReadAll(sp.reader(ctx))
			done <- err
		}()
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the reader kept waiting after its context ended")
		}
	})

	t.Run("the spool leaves no file behind", func(t *testing.T) {
		dir := t.TempDir()
		sp, err := newSpool(dir)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = sp.Write([]byte("x"))
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%d files in the spool's directory while it is in use, want none (unlinked)", len(ents))
		}
		sp.release()
	})
}

// niceOf reads a thread's nice value from /proc.
func niceOf(t *testing.T, tid int32) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(int(tid)) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	n, err := strconv.Atoi(f[16]) // field 19 of stat; f[0] is field 3
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestLowThread(t *testing.T) {
	var tid atomic.Int32
	ready, finish := make(chan struct{}), make(chan struct{})
	go func() {
		tid.Store(lowThread())
		close(ready)
		<-finish
	}()
	<-ready
	defer close(finish)
	id := tid.Load()
	if id == 0 {
		t.Fatal("lowThread could not lower the priority")
	}
	if n := niceOf(t, id); n != altNice {
		t.Errorf("the encoder's thread has nice %d, want %d", n, altNice)
	}
	// The rest of the process keeps its priority: here, the test's own
	// thread, which cannot be the one lowThread took.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if n := niceOf(t, int32(unix.Gettid())); n != 0 {
		t.Errorf("another thread has nice %d, want 0", n)
	}
	raise(&tid)
	if os.Geteuid() == 0 {
		if n := niceOf(t, id); n != 0 {
			t.Errorf("after raise the thread has nice %d, want 0", n)
		}
	}
}
