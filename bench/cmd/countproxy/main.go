// Command countproxy is a reverse proxy in front of the benchmark's registry
// that counts the bytes each builder pulls and pushes.
//
// Every peer (docker, buildah, kiln) talks to the registry through this
// proxy, so all three are measured at the same place and in the same way:
// "pulled" is the size of every response body the registry sent, "pushed"
// the size of every request body a client sent. Counting at the wire, not
// in each tool, is the only way to compare tools that report (or hide) their
// traffic differently.
//
// Control endpoints (never forwarded):
//
//	GET  /_bench/stats  → {"pulled":N,"pushed":N,"requests":N}
//	POST /_bench/reset  → zeroes the counters
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

type counters struct {
	pulled   atomic.Int64
	pushed   atomic.Int64
	requests atomic.Int64
}

// countingBody counts the bytes a client uploads as the proxy reads them.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// countingWriter counts the bytes the registry sends back.
type countingWriter struct {
	http.ResponseWriter
	n *atomic.Int64
}

func (w countingWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// Flush keeps streamed responses streaming through the wrapper.
func (w countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func newHandler(target *url.URL, c *counters) http.Handler {
	proxy := &httputil.ReverseProxy{
		// The Host header is kept as the client sent it so the registry
		// builds upload Location URLs that point back at the proxy.
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = target.Scheme
			pr.Out.URL.Host = target.Host
			pr.Out.Host = pr.In.Host
		},
		FlushInterval: -1,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_bench/stats", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]int64{
			"pulled":   c.pulled.Load(),
			"pushed":   c.pushed.Load(),
			"requests": c.requests.Load(),
		})
	})
	mux.HandleFunc("POST /_bench/reset", func(w http.ResponseWriter, _ *http.Request) {
		c.pulled.Store(0)
		c.pushed.Store(0)
		c.requests.Store(0)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.requests.Add(1)
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = countingBody{ReadCloser: r.Body, n: &c.pushed}
		}
		proxy.ServeHTTP(countingWriter{ResponseWriter: w, n: &c.pulled}, r)
	})
	return mux
}

func run(ctx context.Context, listen, upstream, portFile string) error {
	target, err := url.Parse(upstream)
	if err != nil {
		return fmt.Errorf("parse -target: %w", err)
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("parse -listen: %w", err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-listen %q: the benchmark listens on loopback only", listen)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if portFile != "" {
		if err := os.WriteFile(portFile, []byte(strconv.Itoa(port)+"\n"), 0o644); err != nil {
			return fmt.Errorf("write port file: %w", err)
		}
	}
	srv := &http.Server{Handler: newHandler(target, &counters{}), ReadHeaderTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	log.Printf("countproxy: 127.0.0.1:%d → %s", port, target)
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "loopback address to listen on")
	upstream := flag.String("target", "", "registry URL to forward to, e.g. http://127.0.0.1:5000")
	portFile := flag.String("portfile", "", "write the chosen port to this file")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *listen, *upstream, *portFile); err != nil {
		log.Fatalf("countproxy: %v", err)
	}
}
