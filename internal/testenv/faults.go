package testenv

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Fault is one kind of failure FaultProxy injects.
type Fault string

const (
	// Fault500 answers 500 Internal Server Error without forwarding.
	Fault500 Fault = "500"
	// FaultReset resets the connection (TCP RST) without answering.
	FaultReset Fault = "reset"
	// FaultTruncate forwards, then sends only part of the response body
	// under the full Content-Length and closes the connection.
	FaultTruncate Fault = "truncate"
	// FaultBitFlip forwards and flips one bit of the response body.
	FaultBitFlip Fault = "bitflip"
	// FaultStall waits StallTime before forwarding.
	FaultStall Fault = "stall"
)

// StallTime is how long a FaultStall holds a request.
const StallTime = 2 * time.Second

// DefaultFaultSeed seeds FaultProxy when KILN_FAULT_SEED is unset, so a
// run is repeatable by default.
const DefaultFaultSeed = 10

// FaultSeed returns the seed from KILN_FAULT_SEED, or DefaultFaultSeed.
func FaultSeed(t testing.TB) uint64 {
	t.Helper()
	v := os.Getenv("KILN_FAULT_SEED")
	if v == "" {
		return DefaultFaultSeed
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("testenv: KILN_FAULT_SEED=%q: %v", v, err)
	}
	return n
}

// FaultProxy is a reverse proxy on a loopback port in front of a real
// registry that injects faults into a seeded random share of requests:
// 500s, connection resets, truncated and bit-flipped bodies, and stalls.
// Body faults apply to responses that have a body (GET); requests that
// carry one (uploads) get the others. The sequence of choices is fixed by
// the seed; which request gets which depends on their order, which
// concurrency makes vary.
type FaultProxy struct {
	// Host is "127.0.0.1:PORT", to use in place of the registry's.
	Host string

	enabled atomic.Bool
	mu      sync.Mutex
	rng     *rand.Rand
	rate    float64
	counts  map[Fault]int
	total   int
}

// NewFaultProxy starts a FaultProxy towards registry ("127.0.0.1:PORT")
// that faults the given share of requests (0..1), stopped in t.Cleanup. It
// starts enabled.
func NewFaultProxy(t testing.TB, registry string, seed uint64, rate float64) *FaultProxy {
	t.Helper()
	target, err := url.Parse("http://" + registry)
	if err != nil {
		t.Fatalf("testenv: NewFaultProxy: %v", err)
	}
	p := &FaultProxy{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), rate: rate, counts: map[Fault]int{}}
	p.enabled.Store(true)
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.Out.Host = r.In.Host // the registry builds upload URLs from it
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.serve(rp, w, r)
	}))
	t.Cleanup(srv.Close)
	p.Host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// SetEnabled turns fault injection on or off; off, the proxy only forwards.
func (p *FaultProxy) SetEnabled(on bool) { p.enabled.Store(on) }

// Counts returns how many faults of each kind were injected so far, and
// how many requests were seen.
func (p *FaultProxy) Counts() (map[Fault]int, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[Fault]int, len(p.counts))
	for k, v := range p.counts {
		out[k] = v
	}
	return out, p.total
}

// String summarises Counts: "12 of 340 requests: 500 x3, reset x2, …".
func (p *FaultProxy) String() string {
	counts, total := p.Counts()
	kinds := make([]string, 0, len(counts))
	sum := 0
	for k, n := range counts {
		kinds = append(kinds, fmt.Sprintf("%s x%d", k, n))
		sum += n
	}
	sort.Strings(kinds)
	return fmt.Sprintf("%d of %d requests faulted: %s", sum, total, strings.Join(kinds, ", "))
}

// pick decides the fault for one request ("" for none).
func (p *FaultProxy) pick(r *http.Request) Fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total++
	if !p.enabled.Load() || r.URL.Path == "/v2/" || p.rng.Float64() >= p.rate {
		return ""
	}
	kinds := []Fault{Fault500, FaultReset, FaultStall}
	if r.Method == http.MethodGet {
		kinds = append(kinds, FaultTruncate, FaultBitFlip)
	}
	f := kinds[p.rng.IntN(len(kinds))]
	p.counts[f]++
	return f
}

func (p *FaultProxy) serve(rp *httputil.ReverseProxy, w http.ResponseWriter, r *http.Request) {
	switch p.pick(r) {
	case Fault500:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"errors":[{"code":"UNKNOWN","message":"injected fault"}]}`)
	case FaultReset:
		reset(w)
	case FaultStall:
		select {
		case <-time.After(StallTime):
			rp.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	case FaultTruncate:
		rec := record(rp, r)
		if len(rec.body) < 2 {
			reset(w)
			return
		}
		copyHeader(w, rec)
		w.Header().Set("Content-Length", strconv.Itoa(len(rec.body)))
		w.WriteHeader(rec.code)
		w.Write(rec.body[:len(rec.body)/2])
		// The server closes the connection: fewer bytes than announced.
	case FaultBitFlip:
		rec := record(rp, r)
		if len(rec.body) > 0 {
			rec.body[len(rec.body)/2] ^= 0x10
		}
		copyHeader(w, rec)
		w.Header().Set("Content-Length", strconv.Itoa(len(rec.body)))
		w.WriteHeader(rec.code)
		w.Write(rec.body)
	default:
		rp.ServeHTTP(w, r)
	}
}

// recorded is a response read whole from the registry.
type recorded struct {
	code   int
	header http.Header
	body   []byte
}

func record(rp *httputil.ReverseProxy, r *http.Request) recorded {
	rw := httptest.NewRecorder()
	rp.ServeHTTP(rw, r)
	return recorded{code: rw.Code, header: rw.Header(), body: bytes.Clone(rw.Body.Bytes())}
}

func copyHeader(w http.ResponseWriter, rec recorded) {
	for k, vs := range rec.header {
		w.Header()[k] = vs
	}
}

// reset closes the client's connection with a TCP RST.
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("testenv: FaultProxy: response writer cannot hijack")
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}
