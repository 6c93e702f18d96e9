package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// config is one load run.
type config struct {
	URL      string        // registry base URL, http://127.0.0.1:PORT
	Clients  int           // concurrent clients
	Duration time.Duration // how long clients start new operations
	PID      int           // server process whose RSS is sampled; 0: none
	User     string        // basic auth, optional
	Password string
	Repos    int   // repositories the clients spread over
	MinBlob  int64 // blob sizes are log-uniform in [MinBlob, MaxBlob]
	MaxBlob  int64
	Seed     uint64
}

// result is what a run measured. Every count is of completed operations.
type result struct {
	URL            string   `json:"url"`
	Clients        int      `json:"clients"`
	Seconds        float64  `json:"seconds"`
	Requests       int64    `json:"requests"`
	BytesUp        int64    `json:"bytesUp"`
	BytesDown      int64    `json:"bytesDown"`
	BlobsPushed    int64    `json:"blobsPushed"`
	ChunkedPushes  int64    `json:"chunkedPushes"`
	Manifests      int64    `json:"manifestsPushed"`
	BlobsVerified  int64    `json:"blobsVerified"`
	ManifestsRead  int64    `json:"manifestsVerified"`
	Errors         int64    `json:"errors"`
	Corrupted      int64    `json:"corrupted"`
	FirstErrors    []string `json:"firstErrors,omitempty"`
	PeakRSSBytes   int64    `json:"peakRssBytes,omitempty"`   // highest VmRSS sampled during the run
	ServerHWMBytes int64    `json:"serverHwmBytes,omitempty"` // VmHWM at the end: the process's peak since it started
	MBPerSecond    float64  `json:"mbPerSecond"`              // (up + down) / seconds, 10^6 bytes
	ReqPerSecond   float64  `json:"requestsPerSecond"`
	Load1          float64  `json:"load1,omitempty"` // the machine's 1-minute load average at the end
}

// blobRef is a blob some client pushed, to be read back by any client.
type blobRef struct {
	repo   string
	digest string
	size   int64
}

// manifestRef is a manifest some client pushed.
type manifestRef struct {
	repo, tag, digest string
}

// pool holds what was pushed, so pulls pick among real content. It keeps
// the newest entries up to a cap: the load tester's memory stays bounded
// however long it runs.
type pool struct {
	mu        sync.Mutex
	blobs     []blobRef
	manifests []manifestRef
	next      int
	nextM     int
}

const poolCap = 20000

func (p *pool) addBlob(b blobRef) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.blobs) < poolCap {
		p.blobs = append(p.blobs, b)
		return
	}
	p.blobs[p.next] = b
	p.next = (p.next + 1) % poolCap
}

func (p *pool) addManifest(m manifestRef) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.manifests) < poolCap {
		p.manifests = append(p.manifests, m)
		return
	}
	p.manifests[p.nextM] = m
	p.nextM = (p.nextM + 1) % poolCap
}

func (p *pool) randomBlob(r *rand.Rand) (blobRef, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.blobs) == 0 {
		return blobRef{}, false
	}
	return p.blobs[r.IntN(len(p.blobs))], true
}

func (p *pool) randomManifest(r *rand.Rand) (manifestRef, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.manifests) == 0 {
		return manifestRef{}, false
	}
	return p.manifests[r.IntN(len(p.manifests))], true
}

// errCorrupt marks a read whose bytes did not match the digest pushed.
var errCorrupt = errors.New("corrupted")

// loader runs one load test.
type loader struct {
	cfg    config
	base   *url.URL
	client *http.Client
	pool   pool

	requests, up, down         atomic.Int64
	pushed, chunked, manifests atomic.Int64
	verified, manifestsRead    atomic.Int64
	errs, corrupted            atomic.Int64
	errMu                      sync.Mutex
	firstErrors                []string
	peakRSS                    atomic.Int64
}

// run drives cfg.Clients clients for cfg.Duration and reports what they
// saw. An operation in flight at the deadline is finished, not cut off.
func run(ctx context.Context, cfg config) (result, error) {
	base, err := url.Parse(cfg.URL)
	if err != nil || base.Host == "" {
		return result{}, fmt.Errorf("registry URL %q: want http://HOST:PORT", cfg.URL)
	}
	if cfg.Repos <= 0 {
		cfg.Repos = 8
	}
	if cfg.MinBlob <= 0 || cfg.MaxBlob < cfg.MinBlob {
		return result{}, fmt.Errorf("blob sizes [%d, %d]: want 0 < min <= max", cfg.MinBlob, cfg.MaxBlob)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = cfg.Clients
	tr.DisableCompression = true
	l := &loader{cfg: cfg, base: base, client: &http.Client{Transport: tr, Timeout: 2 * time.Minute}}

	if _, err := l.do(ctx, http.MethodGet, "/v2/", nil, nil, http.StatusOK); err != nil {
		return result{}, fmt.Errorf("registry at %s: %w", cfg.URL, err)
	}

	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampler sync.WaitGroup
	if cfg.PID > 0 {
		if _, err := rss(cfg.PID, "VmRSS"); err != nil {
			stopSampling()
			return result{}, fmt.Errorf("server pid %d: %w", cfg.PID, err)
		}
		sampler.Go(func() { l.sample(sampleCtx) })
	}

	start := time.Now()
	deadline := start.Add(cfg.Duration)
	var wg sync.WaitGroup
	for i := range cfg.Clients {
		wg.Go(func() { l.client1(ctx, i, deadline) })
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	stopSampling()
	sampler.Wait()

	res := result{
		URL: cfg.URL, Clients: cfg.Clients, Seconds: elapsed,
		Requests: l.requests.Load(), BytesUp: l.up.Load(), BytesDown: l.down.Load(),
		BlobsPushed: l.pushed.Load(), ChunkedPushes: l.chunked.Load(), Manifests: l.manifests.Load(),
		BlobsVerified: l.verified.Load(), ManifestsRead: l.manifestsRead.Load(),
		Errors: l.errs.Load(), Corrupted: l.corrupted.Load(), FirstErrors: l.firstErrors,
		PeakRSSBytes: l.peakRSS.Load(),
	}
	res.MBPerSecond = float64(res.BytesUp+res.BytesDown) / 1e6 / elapsed
	res.ReqPerSecond = float64(res.Requests) / elapsed
	if cfg.PID > 0 {
		res.ServerHWMBytes, _ = rss(cfg.PID, "VmHWM")
	}
	res.Load1 = load1()
	return res, ctx.Err()
}

// client1 is one client: it pushes images (a config and one to three
// layers, each uploaded in one PUT or in chunks, then the manifest) and
// reads back random blobs and manifests pushed by any client, checking
// every byte against its digest.
func (l *loader) client1(ctx context.Context, id int, deadline time.Time) {
	r := rand.New(rand.NewPCG(l.cfg.Seed, uint64(id)))
	for n := 0; time.Now().Before(deadline) && ctx.Err() == nil; n++ {
		var err error
		switch x := r.Float64(); {
		case x < 0.3:
			err = l.pushImage(ctx, r, fmt.Sprintf("c%d-%d", id, n))
		case x < 0.4:
			err = l.pullManifest(ctx, r)
		default:
			err = l.pullBlob(ctx, r)
		}
		if err != nil && ctx.Err() == nil {
			l.fail(err)
		}
	}
}

func (l *loader) fail(err error) {
	if errors.Is(err, errCorrupt) {
		l.corrupted.Add(1)
	} else {
		l.errs.Add(1)
	}
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if len(l.firstErrors) < 10 {
		l.firstErrors = append(l.firstErrors, err.Error())
	}
}

func (l *loader) repo(r *rand.Rand) string { return fmt.Sprintf("load/r%d", r.IntN(l.cfg.Repos)) }

// size is log-uniform in [MinBlob, MaxBlob]: many small blobs (configs,
// small layers), some large, as in a build cache.
func (l *loader) size(r *rand.Rand) int64 {
	lo, hi := math.Log(float64(l.cfg.MinBlob)), math.Log(float64(l.cfg.MaxBlob))
	return int64(math.Exp(lo + r.Float64()*(hi-lo)))
}

// content is size random bytes.
func content(r *rand.Rand, size int64) []byte {
	b := make([]byte, size)
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	for i := len(b) &^ 7; i < len(b); i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

const manifestType = "application/vnd.oci.image.manifest.v1+json"

func (l *loader) pushImage(ctx context.Context, r *rand.Rand, tag string) error {
	repo := l.repo(r)
	m := manifest{SchemaVersion: 2, MediaType: manifestType}
	for range 1 + r.IntN(3) {
		b := content(r, l.size(r))
		d, err := l.pushBlob(ctx, r, repo, b)
		if err != nil {
			return err
		}
		m.Layers = append(m.Layers, descriptor{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: d, Size: int64(len(b))})
	}
	cfg := fmt.Appendf(nil, `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Env":["LOAD=%s/%s"]}}`, repo, tag)
	d, err := l.pushBlob(ctx, r, repo, cfg)
	if err != nil {
		return err
	}
	m.Config = descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: d, Size: int64(len(cfg))}
	body, _ := json.Marshal(m)
	h := http.Header{"Content-Type": {manifestType}}
	if _, err := l.do(ctx, http.MethodPut, "/v2/"+repo+"/manifests/"+tag, h, body, http.StatusCreated); err != nil {
		return fmt.Errorf("push manifest %s:%s: %w", repo, tag, err)
	}
	l.manifests.Add(1)
	l.pool.addManifest(manifestRef{repo: repo, tag: tag, digest: digestOf(body)})
	return nil
}

// pushBlob uploads b monolithically (POST, then one PUT with the bytes) or
// in chunks (POST, PATCHes with Content-Range, then PUT with the digest),
// half and half.
func (l *loader) pushBlob(ctx context.Context, r *rand.Rand, repo string, b []byte) (string, error) {
	d := digestOf(b)
	resp, err := l.do(ctx, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil, nil, http.StatusAccepted)
	if err != nil {
		return "", fmt.Errorf("start upload to %s: %w", repo, err)
	}
	loc := resp.Header.Get("Location")
	chunked := len(b) > 1 && r.IntN(2) == 0
	if chunked {
		chunk := max(len(b)/(2+r.IntN(4)), 1)
		for off := 0; off < len(b); off += chunk {
			end := min(off+chunk, len(b))
			h := http.Header{
				"Content-Type":  {"application/octet-stream"},
				"Content-Range": {fmt.Sprintf("%d-%d", off, end-1)},
			}
			resp, err := l.do(ctx, http.MethodPatch, loc, h, b[off:end], http.StatusAccepted)
			if err != nil {
				return "", fmt.Errorf("upload chunk %d-%d of %s to %s: %w", off, end-1, d, repo, err)
			}
			loc = resp.Header.Get("Location")
		}
		if _, err := l.do(ctx, http.MethodPut, withDigest(loc, d), nil, nil, http.StatusCreated); err != nil {
			return "", fmt.Errorf("finish chunked upload of %s to %s: %w", d, repo, err)
		}
		l.chunked.Add(1)
	} else {
		h := http.Header{"Content-Type": {"application/octet-stream"}}
		if _, err := l.do(ctx, http.MethodPut, withDigest(loc, d), h, b, http.StatusCreated); err != nil {
			return "", fmt.Errorf("upload %s to %s: %w", d, repo, err)
		}
	}
	l.pushed.Add(1)
	l.pool.addBlob(blobRef{repo: repo, digest: d, size: int64(len(b))})
	return d, nil
}

func withDigest(loc, d string) string {
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	return loc + sep + "digest=" + url.QueryEscape(d)
}

// pullBlob reads a random pushed blob whole and checks its digest and size.
func (l *loader) pullBlob(ctx context.Context, r *rand.Rand) error {
	b, ok := l.pool.randomBlob(r)
	if !ok {
		return l.pushImage(ctx, r, fmt.Sprintf("seed-%d", r.Uint64()))
	}
	path := "/v2/" + b.repo + "/blobs/" + b.digest
	if r.IntN(4) == 0 {
		resp, err := l.do(ctx, http.MethodHead, path, nil, nil, http.StatusOK)
		if err != nil {
			return fmt.Errorf("HEAD blob %s in %s: %w", b.digest, b.repo, err)
		}
		if resp.ContentLength != b.size {
			return fmt.Errorf("HEAD blob %s in %s: size %d, pushed %d: %w", b.digest, b.repo, resp.ContentLength, b.size, errCorrupt)
		}
	}
	got, n, err := l.get(ctx, path, nil)
	if err != nil {
		return fmt.Errorf("GET blob %s in %s: %w", b.digest, b.repo, err)
	}
	if got != b.digest || n != b.size {
		return fmt.Errorf("GET blob %s in %s: read %d bytes with digest %s, pushed %d: %w", b.digest, b.repo, n, got, b.size, errCorrupt)
	}
	l.verified.Add(1)
	return nil
}

// pullManifest reads a random pushed manifest by tag and checks its digest.
func (l *loader) pullManifest(ctx context.Context, r *rand.Rand) error {
	m, ok := l.pool.randomManifest(r)
	if !ok {
		return l.pushImage(ctx, r, fmt.Sprintf("seed-%d", r.Uint64()))
	}
	got, _, err := l.get(ctx, "/v2/"+m.repo+"/manifests/"+m.tag, http.Header{"Accept": {manifestType}})
	if err != nil {
		return fmt.Errorf("GET manifest %s:%s: %w", m.repo, m.tag, err)
	}
	if got != m.digest {
		return fmt.Errorf("GET manifest %s:%s: digest %s, pushed %s: %w", m.repo, m.tag, got, m.digest, errCorrupt)
	}
	l.manifestsRead.Add(1)
	return nil
}

// get streams path's body through sha256 and returns its digest and length.
func (l *loader) get(ctx context.Context, path string, h http.Header) (string, int64, error) {
	req, err := l.request(ctx, http.MethodGet, path, h, nil)
	if err != nil {
		return "", 0, err
	}
	resp, err := l.client.Do(req)
	l.requests.Add(1)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, statusError(resp)
	}
	sum := sha256.New()
	n, err := io.Copy(sum, resp.Body)
	l.down.Add(n)
	if err != nil {
		return "", n, fmt.Errorf("read body: %w", err)
	}
	return "sha256:" + hex.EncodeToString(sum.Sum(nil)), n, nil
}

// do sends one request and fails unless the answer is want; the body of
// the answer is read and dropped.
func (l *loader) do(ctx context.Context, method, path string, h http.Header, body []byte, want int) (*http.Response, error) {
	req, err := l.request(ctx, method, path, h, body)
	if err != nil {
		return nil, err
	}
	resp, err := l.client.Do(req)
	l.requests.Add(1)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	l.up.Add(int64(len(body)))
	if resp.StatusCode != want {
		return nil, statusError(resp)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	l.down.Add(n)
	return resp, nil
}

func (l *loader) request(ctx context.Context, method, path string, h http.Header, body []byte) (*http.Request, error) {
	u, err := l.base.Parse(path)
	if err != nil {
		return nil, fmt.Errorf("location %q: %w", path, err)
	}
	if u.Host != l.base.Host {
		// Never follow a registry somewhere else: this tool talks to
		// one server on loopback.
		return nil, fmt.Errorf("location %q leaves %s", path, l.base.Host)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if body == nil && (method == http.MethodPut || method == http.MethodPatch) {
		req.ContentLength = 0
	}
	if l.cfg.User != "" {
		req.SetBasicAuth(l.cfg.User, l.cfg.Password)
	}
	return req, nil
}

func statusError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return fmt.Errorf("%s %s: %s: %s", resp.Request.Method, resp.Request.URL.Path, resp.Status, bytes.TrimSpace(b))
}

// sample records the server's highest resident set size while the run
// lasts, every 100ms.
func (l *loader) sample(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if n, err := rss(l.cfg.PID, "VmRSS"); err == nil && n > l.peakRSS.Load() {
			l.peakRSS.Store(n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rss reads a memory field ("VmRSS", "VmHWM") of /proc/PID/status in bytes.
func rss(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %q: %w", field, v, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// load1 is the 1-minute load average, 0 when unreadable.
func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}
