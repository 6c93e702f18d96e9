package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/kiln-build/kiln/internal/testenv"
)

// rssBound is what kiln cache serve may hold resident under the short
// load below. Measured on 2 shared cores: 43 MiB under this test's 8
// clients, 59-61 MiB under 32 clients for 60 s (bench/README.md). The
// bound leaves room for a slower GC on a loaded machine; a server that
// held uploads or reads whole in memory (8 clients, blobs up to 4 MiB,
// several copies each) or kept something per request would exceed it.
const rssBound = 150 << 20

// startKilnServe runs `kiln cache serve` on a free loopback port and
// returns its URL and pid.
func startKilnServe(t *testing.T) (string, int) {
	t.Helper()
	cmd := exec.Command(testenv.Kiln(t), "cache", "serve", "--addr", "127.0.0.1:0", "--root", t.TempDir())
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				addr <- line.Addr
			}
		}
	}()
	select {
	case a := <-addr:
		return "http://" + a, cmd.Process.Pid
	case <-time.After(30 * time.Second):
		t.Fatal("kiln cache serve did not report its address")
	}
	return "", 0
}

// The short form of bench/loadtest.sh: 8 clients for 5 s push and pull
// through every upload style, and the server answers every request, never
// returns a byte other than those pushed, and stays within rssBound.
func TestLoadKilnCacheServe(t *testing.T) {
	url, pid := startKilnServe(t)
	res, err := run(context.Background(), config{
		URL: url, Clients: 8, Duration: 5 * time.Second, PID: pid,
		MinBlob: 1 << 10, MaxBlob: 4 << 20, Seed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(summary("kiln cache serve", res))
	if res.Errors > 0 || res.Corrupted > 0 {
		t.Errorf("%d errors, %d corrupted reads: %s", res.Errors, res.Corrupted, strings.Join(res.FirstErrors, "\n"))
	}
	if res.BlobsPushed == 0 || res.ChunkedPushes == 0 || res.ChunkedPushes == res.BlobsPushed || res.Manifests == 0 || res.BlobsVerified == 0 || res.ManifestsRead == 0 {
		t.Errorf("the load missed an operation kind: %+v", res)
	}
	if res.PeakRSSBytes == 0 || res.PeakRSSBytes > rssBound {
		t.Errorf("server peak RSS %d MiB, bound %d MiB", res.PeakRSSBytes>>20, rssBound>>20)
	}
}

// A server that flips one byte of some blobs it sends is caught: the load
// test counts corrupted reads, not only failed requests.
func TestLoadCountsCorruptedBlobs(t *testing.T) {
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			rec := httptest.NewRecorder()
			reg.ServeHTTP(rec, r)
			b := rec.Body.Bytes()
			if len(b) > 0 {
				b[len(b)/2] ^= 1
			}
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(b)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	res, err := run(context.Background(), config{URL: srv.URL, Clients: 4, Duration: time.Second, MinBlob: 100, MaxBlob: 10000, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Corrupted == 0 || res.BlobsVerified > 0 {
		t.Errorf("every blob read was corrupt: %d counted corrupt, %d verified", res.Corrupted, res.BlobsVerified)
	}
	if res.Errors > 0 {
		t.Errorf("%d errors from an otherwise working registry: %v", res.Errors, res.FirstErrors)
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:5000", "http://[::1]:5000", "http://127.0.0.2:1"} {
		if err := loopbackOnly(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "127.0.0.1:5000", "https://127.0.0.1:5000", "http://localhost:5000", "http://10.0.0.1:5000", "http://registry.example:5000"} {
		if err := loopbackOnly(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
