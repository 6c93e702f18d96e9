// Package ioctx makes long copies stop when their context ends: io.Copy
// has no context, and a multi-gigabyte blob copy must not outlive a
// cancelled build.
package ioctx

import (
	"context"
	"io"
)

// Reader returns r, failing every Read with ctx's error once ctx is done.
func Reader(ctx context.Context, r io.Reader) io.Reader { return reader{ctx, r} }

type reader struct {
	ctx context.Context
	r   io.Reader
}

func (c reader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
