package progress

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestPlainLines(t *testing.T) {
	var b bytes.Buffer
	s := Plain(&b)
	s.Emit(Event{ID: 1, Name: "[1/2] COPY a /a", Status: Started})
	s.Emit(Event{ID: 1, Status: Done, Duration: 1500 * time.Millisecond})
	s.Emit(Event{ID: 2, Name: "[2/2] WORKDIR /x", Status: Started})
	s.Emit(Event{ID: 2, Status: Log, Log: "hello from the step"})
	s.Emit(Event{ID: 2, Status: Failed, Err: errors.New("boom")})
	want := "#1 [1/2] COPY a /a\n#1 DONE 1.5s\n#2 [2/2] WORKDIR /x\n#2 hello from the step\n#2 ERROR 0.0s: boom\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}

func TestTTYRedrawsInPlace(t *testing.T) {
	var b bytes.Buffer
	s := TTY(&b)
	s.Emit(Event{ID: 1, Name: "step one", Status: Started})
	s.Emit(Event{ID: 1, Name: "step one", Status: Done, Duration: time.Second})
	out := b.String()
	if !strings.Contains(out, "\x1b[2A") {
		t.Errorf("second draw does not move the cursor back over the first: %q", out)
	}
	if !strings.Contains(out, "step one") || !strings.Contains(out, "1.0s") {
		t.Errorf("output lacks the step or its duration: %q", out)
	}
}

func TestTrackerEndsOpenSteps(t *testing.T) {
	var b bytes.Buffer
	tr := Track(Plain(&b))
	tr.Emit(Event{ID: 1, Name: "a", Status: Started})
	tr.Emit(Event{ID: 2, Name: "b", Status: Started})
	tr.Emit(Event{ID: 3, Name: "c", Status: Started})
	tr.Emit(Event{ID: 2, Status: Cached})
	tr.EndOpen()
	tr.EndOpen() // nothing left
	want := "#1 a\n#2 b\n#3 c\n#2 CACHED\n#1 ERROR 0.0s: " + ErrUnfinished.Error() + "\n#3 ERROR 0.0s: " + ErrUnfinished.Error() + "\n"
	if b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
