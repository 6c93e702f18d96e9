package solver

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// A process that prints megabytes without a newline must neither hold them
// all nor wait for the end to show anything.
func TestTailBoundsUnfinishedLine(t *testing.T) {
	var emitted []int
	tl := newTail(3, func(l string) { emitted = append(emitted, len(l)) })
	chunk := bytes.Repeat([]byte("x"), 4096)
	for range 256 { // 1 MiB, no newline
		tl.Write(chunk)
		if len(tl.buf) > maxLine {
			t.Fatalf("held %d bytes of an unfinished line, want at most %d", len(tl.buf), maxLine)
		}
	}
	// The last piece is held until more output or the end shows whether
	// it is a whole line.
	if len(emitted) != 15 {
		t.Fatalf("emitted %d pieces of a 1 MiB line, want 15 of %d bytes", len(emitted), maxLine)
	}
	tl.Flush()
	for _, n := range emitted {
		if n != maxLine {
			t.Fatalf("piece of %d bytes, want %d", n, maxLine)
		}
	}
	if got := tl.Lines(); len(got) != 3 {
		t.Fatalf("kept %d lines, want 3", len(got))
	}
}

func TestTailSplitsLinesAcrossWrites(t *testing.T) {
	var got []string
	tl := newTail(2, func(l string) { got = append(got, l) })
	for _, w := range []string{"a", "b\nc", "\r\n", "", "\nd\ne"} {
		tl.Write([]byte(w))
	}
	tl.Flush()
	if want := "ab|c||d|e"; strings.Join(got, "|") != want {
		t.Fatalf("lines %q, want %q", strings.Join(got, "|"), want)
	}
	if want := "d|e"; strings.Join(tl.Lines(), "|") != want {
		t.Fatalf("kept %q, want %q", strings.Join(tl.Lines(), "|"), want)
	}
}

// Many small writes of one long line cost linear time: the old tail copied
// the whole buffer on every write.
func TestTailIsLinear(t *testing.T) {
	tl := newTail(20, nil)
	b := []byte("y")
	start := time.Now()
	for i := range 8 << 20 { // 8 MiB, one byte per write
		tl.Write(b)
		if i%4096 == 0 && time.Since(start) > 20*time.Second {
			t.Fatalf("%d bytes in 1-byte writes took %s: quadratic", i, time.Since(start))
		}
	}
}
