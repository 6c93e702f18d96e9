package solver

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The zstd copy of a base layer is made off the build's critical path.
// The extraction that inflates the layer is what the build's first miss
// waits for, and on a CI runner's two cores an encoder beside it takes
// the CPU the extraction needs (it was a third of a cold go-service
// extraction's CPU), or falls so far behind that the copy is given up.
// So the extraction's copy of the tar goes into a spool file as fast as
// it comes (a page-cache write), and the encoder follows the file on a
// thread of the lowest priority: it runs when the build leaves a core
// idle (I/O waits, a link step, uploads), and is raised back to normal
// priority only when the cache export waits for it.

// altNice is the nice value of the encoder's thread until the export
// needs the copy: the lowest priority, so a RUN or an extraction beside it
// is hardly slowed.
const altNice = 19

// spool is a snapshot.TarWriter that keeps the tar in an unlinked file,
// which reader follows as it grows. Write never waits for the reader.
type spool struct {
	f *os.File

	mu     sync.Mutex
	n      int64 // bytes written
	closed bool
	err    error         // the CloseWithError verdict
	more   chan struct{} // closed on the next write or close
}

// newSpool makes a spool whose file lives in dir, unlinked at once so
// that nothing is left behind whatever ends the build.
func newSpool(dir string) (*spool, error) {
	f, err := os.CreateTemp(dir, "alt-tar-*")
	if err != nil {
		return nil, fmt.Errorf("spool for the zstd copy: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("spool for the zstd copy: %w", err)
	}
	return &spool{f: f, more: make(chan struct{})}, nil
}

func (s *spool) Write(p []byte) (int, error) {
	n, err := s.f.Write(p)
	s.mu.Lock()
	s.n += int64(n)
	s.wake()
	s.mu.Unlock()
	return n, err
}

// CloseWithError ends the tar: the reader returns io.EOF after the last
// byte when err is nil, else err.
func (s *spool) CloseWithError(err error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed, s.err = true, err
		s.wake()
	}
	return nil
}

// wake tells a waiting reader that something changed; s.mu is held.
func (s *spool) wake() {
	close(s.more)
	s.more = make(chan struct{})
}

// reader reads the spool from its start, waiting for bytes not written
// yet, until the verdict; ctx ends a wait.
func (s *spool) reader(ctx context.Context) io.Reader {
	return &spoolReader{s: s, ctx: ctx}
}

// release closes the file; its space is freed with it.
func (s *spool) release() { _ = s.f.Close() }

type spoolReader struct {
	s   *spool
	ctx context.Context
	off int64
}

func (r *spoolReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		r.s.mu.Lock()
		n, closed, verdict, more := r.s.n, r.s.closed, r.s.err, r.s.more
		r.s.mu.Unlock()
		if r.off < n {
			k, err := r.s.f.ReadAt(p[:min(int64(len(p)), n-r.off)], r.off)
			r.off += int64(k)
			if err == io.EOF && k > 0 {
				err = nil
			}
			return k, err
		}
		if closed {
			if verdict != nil {
				return 0, verdict
			}
			return 0, io.EOF
		}
		select {
		case <-more:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

// lowThread runs the calling goroutine on a thread of its own at the
// lowest priority, for the rest of the goroutine's life: the thread ends
// with it (it is never unlocked), so no other goroutine inherits the
// priority. It returns the thread's id, for raise; 0 when the priority
// could not be set (the work then runs at normal priority).
func lowThread() int32 {
	runtime.LockOSThread()
	tid := unix.Gettid()
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, altNice); err != nil {
		return 0
	}
	return int32(tid)
}

// raise puts the thread lowThread lowered back at normal priority, once
// the build waits for its work. Raising a priority takes CAP_SYS_NICE;
// without it the work goes on at the low one, which still gets a core
// the build leaves idle while it waits.
func raise(tid *atomic.Int32) {
	if t := tid.Swap(0); t != 0 {
		_ = unix.Setpriority(unix.PRIO_PROCESS, int(t), 0)
	}
}
