package snapshot

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"
)

// TarTee is an optional power of a layer handed to Prepare or Materialize:
// a layer that wants a copy of its uncompressed tar (to encode it again,
// say) from the extraction that inflates it anyway, instead of inflating
// the blob a second time. It is asked once per extraction of the layer,
// so never on a path that extracts nothing.
type TarTee interface {
	// TeeTar returns where this extraction's copy of the tar goes, or nil
	// for none.
	TeeTar() TarWriter
}

// A TarWriter receives a TarTee's copy: the tar's bytes in order through
// Write, from a goroutine of the snapshotter's, then exactly one
// CloseWithError. A nil error there means every byte was written and
// their sha256 is the layer's diffID; anything else means the copy is
// incomplete or wrong and must be dropped. An error from Write drops the
// copy (the extraction goes on). io.PipeWriter is one.
type TarWriter interface {
	io.Writer
	CloseWithError(error) error
}

// ErrTeeBehind is the error a TarWriter is closed with when it fell so
// far behind the extraction that the copy was given up.
var ErrTeeBehind = errors.New("the tar copy fell behind the extraction")

var errTeeStopped = errors.New("the extraction stopped before the end of the tar")

// Tee bounds. The copy may lag the extraction by teeChunks chunks of the
// read-ahead's size (4 MiB); past that the extraction waits for it, but
// for at most teeStall in all, after which the copy is given up: a slow
// writer may cost a layer that much time, never an unbounded stall, nor
// unbounded memory. The encoders this is made for (zstd's fastest level)
// outrun inflate, so the budget is spent only when they are starved of
// CPU.
const (
	teeChunks = 16
	teeStall  = time.Second
)

// tarTee feeds a TarWriter from the read-ahead's producer through a
// bounded queue of its own buffers, so the producer never waits on the
// writer's Write.
type tarTee struct {
	w       TarWriter
	queue   chan []byte
	free    chan []byte
	waited  time.Duration
	ended   bool
	verdict error       // read by the writer goroutine after queue closes
	dropped atomic.Bool // the writer skips what is still queued
}

// teeOf starts l's tee when l is a TarTee that wants a copy, else nil.
func teeOf(l any) *tarTee {
	tt, ok := l.(TarTee)
	if !ok {
		return nil
	}
	w := tt.TeeTar()
	if w == nil {
		return nil
	}
	t := &tarTee{w: w, queue: make(chan []byte, teeChunks), free: make(chan []byte, teeChunks)}
	for i := 0; i < teeChunks; i++ {
		t.free <- make([]byte, readAheadSize)
	}
	go t.write()
	return t
}

func (t *tarTee) write() {
	var err error
	for b := range t.queue {
		if err == nil && !t.dropped.Load() {
			_, err = t.w.Write(b)
		}
		t.free <- b[:cap(b)]
	}
	if t.verdict != nil {
		// Why the copy was given up says more than the Write that was
		// still under way then.
		err = t.verdict
	}
	_ = t.w.CloseWithError(err)
}

// put queues a copy of b, waiting for room within the stall budget; done
// ends the wait early (the extraction stopped).
func (t *tarTee) put(b []byte, done <-chan struct{}) {
	if t.ended || len(b) == 0 {
		return
	}
	var buf []byte
	select {
	case buf = <-t.free:
	default:
		start := time.Now()
		timer := time.NewTimer(teeStall - t.waited)
		select {
		case buf = <-t.free:
		case <-timer.C:
		case <-done:
		}
		timer.Stop()
		t.waited += time.Since(start)
		if buf == nil {
			t.end(ErrTeeBehind)
			return
		}
	}
	t.queue <- append(buf[:0], b...)
}

// end closes the queue: with a nil verdict once the whole verified tar was
// queued, else with the reason the copy is dropped.
func (t *tarTee) end(verdict error) {
	if t.ended {
		return
	}
	t.ended = true
	if verdict != nil {
		t.dropped.Store(true)
	}
	t.verdict = verdict
	close(t.queue)
}

// finish ends the tee with the stream's final error: io.EOF (the diffID
// checked out) makes the copy whole.
func (t *tarTee) finish(err error) {
	if err == io.EOF { // exactly: hashCheck's word that the diffID matched
		t.end(nil)
		return
	}
	t.end(fmt.Errorf("layer tar unreadable: %w", err))
}
