// Package progress carries build events from the solver to a renderer.
// Libraries emit typed events to a Sink they are given and never print; only
// the CLI picks a renderer: plain lines for CI logs, an in-place redraw for a
// terminal, or nothing at all.
//
// A build wraps its sink in a Tracker: when the build stops early, every
// step still open is ended as failed (ErrUnfinished), so no renderer ever
// shows a step running forever.
package progress

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Status is where a step is in its life.
type Status int

const (
	Started Status = iota
	Done
	Cached
	Failed
	// Log carries one line a step's process printed.
	Log
	// Warning is a problem that does not fail the build (in Log).
	Warning
	// Summary is the build's closing summary, one line (in Log).
	Summary
)

// Event is one change of a step's status. Steps are identified by ID, in
// the order they were first announced.
type Event struct {
	ID       int
	Name     string // e.g. "[build 2/4] COPY . /src"
	Status   Status
	Duration time.Duration // for Done, Cached and Failed
	Err      error         // for Failed
	Log      string        // for Log
}

// Sink receives events. Implementations must be safe for concurrent use:
// stages build in parallel.
type Sink interface {
	Emit(Event)
}

// Discard drops every event.
var Discard Sink = discard{}

type discard struct{}

func (discard) Emit(Event) {}

// Plain writes one line when a step starts and one when it ends, in the
// style of BuildKit's plain progress, which CI logs read well.
func Plain(w io.Writer) Sink { return &plain{w: w} }

type plain struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *plain) Emit(e Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch e.Status {
	case Started:
		fmt.Fprintf(p.w, "#%d %s\n", e.ID, e.Name)
	case Done:
		fmt.Fprintf(p.w, "#%d DONE %.1fs\n", e.ID, e.Duration.Seconds())
	case Cached:
		fmt.Fprintf(p.w, "#%d CACHED\n", e.ID)
	case Failed:
		fmt.Fprintf(p.w, "#%d ERROR %.1fs: %v\n", e.ID, e.Duration.Seconds(), e.Err)
	case Log:
		fmt.Fprintf(p.w, "#%d %s\n", e.ID, e.Log)
	case Warning:
		fmt.Fprintf(p.w, "WARNING: %s\n", e.Log)
	case Summary:
		fmt.Fprintln(p.w, e.Log)
	}
}

// TTY redraws the list of steps in place on a terminal.
func TTY(w io.Writer) Sink { return &tty{w: w, start: time.Now()} }

type ttyStep struct {
	name   string
	status Status
	dur    time.Duration
}

type tty struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
	steps []ttyStep
	ids   map[int]int
	notes []string
	drawn int
}

func (t *tty) Emit(e Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch e.Status {
	case Log:
		return // the redrawn view shows steps, not their output
	case Warning, Summary:
		t.notes = append(t.notes, e.Log)
		t.redraw()
		return
	}
	if t.ids == nil {
		t.ids = map[int]int{}
	}
	i, ok := t.ids[e.ID]
	if !ok {
		i = len(t.steps)
		t.ids[e.ID] = i
		t.steps = append(t.steps, ttyStep{name: e.Name})
	}
	t.steps[i].status = e.Status
	t.steps[i].dur = e.Duration
	t.redraw()
}

func (t *tty) redraw() {
	var b strings.Builder
	if t.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", t.drawn)
	}
	fmt.Fprintf(&b, "\x1b[2K[+] Building %.1fs\n", time.Since(t.start).Seconds())
	for _, s := range t.steps {
		state := "..."
		switch s.status {
		case Done:
			state = fmt.Sprintf("%.1fs", s.dur.Seconds())
		case Cached:
			state = "CACHED"
		case Failed:
			state = "ERROR"
		}
		fmt.Fprintf(&b, "\x1b[2K => %-60s %s\n", s.name, state)
	}
	for _, n := range t.notes {
		fmt.Fprintf(&b, "\x1b[2K%s\n", n)
	}
	t.drawn = len(t.steps) + 1 + len(t.notes)
	io.WriteString(t.w, b.String())
}
