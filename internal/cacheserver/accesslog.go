package cacheserver

import (
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/felixge/httpsnoop"
)

// accessLog logs one structured line per request: what was asked, by whom,
// the answer and the bytes each way.
func accessLog(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := &countingBody{ReadCloser: r.Body}
		if r.Body != nil {
			r.Body = body
		}
		start := time.Now()
		m := httpsnoop.CaptureMetrics(next, w, r)
		observe(r, m.Code, body.n.Load(), m.Written)
		user, _, _ := r.BasicAuth()
		log.Info("request",
			"method", r.Method,
			"path", r.URL.Path,
			"status", m.Code,
			"bytes_in", body.n.Load(),
			"bytes_out", m.Written,
			"duration_ms", float64(time.Since(start).Microseconds())/1000,
			"remote", r.RemoteAddr,
			"user", user,
			"user_agent", r.UserAgent(),
		)
	})
}

type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}
