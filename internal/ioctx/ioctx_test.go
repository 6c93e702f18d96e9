package ioctx

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReaderStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out bytes.Buffer
	if _, err := io.Copy(&out, Reader(ctx, strings.NewReader("abc"))); err != nil || out.String() != "abc" {
		t.Fatalf("copy = %q, %v", out.String(), err)
	}
	cancel()
	if _, err := io.Copy(io.Discard, Reader(ctx, strings.NewReader("abc"))); !errors.Is(err, context.Canceled) {
		t.Errorf("copy after cancel: %v, want context.Canceled", err)
	}
}
