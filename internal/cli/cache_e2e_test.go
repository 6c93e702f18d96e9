package cli_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/testenv"
)

// proxy stands between kiln and the real registry and counts what crosses:
// which blobs were downloaded, and how many bytes went up in blob uploads.
type proxy struct {
	host    string // "127.0.0.1:PORT" of the proxy
	mu      sync.Mutex
	gets    map[string]int64 // blob digest -> bytes downloaded
	up      int64            // bytes sent in blob uploads
	session map[string]int64 // upload session path -> bytes so far
	uploads map[string]int64 // blob digest -> bytes uploaded
	// stall, when set, holds blob uploads until the request is cancelled
	// (the client gave up): a push that never finishes.
	stall   bool
	stalled chan struct{}
}

func newProxy(t *testing.T, registry string) *proxy {
	p := &proxy{gets: map[string]int64{}, session: map[string]int64{}, uploads: map[string]int64{}, stalled: make(chan struct{}, 100)}
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/uploads/") && (r.Method == http.MethodPatch || r.Method == http.MethodPut || r.Method == http.MethodPost) {
			p.mu.Lock()
			stall := p.stall
			p.mu.Unlock()
			if stall && r.URL.Query().Get("mount") == "" {
				select {
				case p.stalled <- struct{}{}:
				default:
				}
				<-r.Context().Done()
				return
			}
		}
		rec := &countingWriter{ResponseWriter: w}
		upload := strings.Contains(r.URL.Path, "/blobs/uploads/") && r.Body != nil
		if upload {
			path := r.URL.Path
			r.Body = &countBody{ReadCloser: r.Body, add: func(n int64) {
				p.mu.Lock()
				p.up += n
				p.session[path] += n
				p.mu.Unlock()
			}}
		}
		rp.ServeHTTP(rec, r)
		if upload && r.Method == http.MethodPut {
			if d := r.URL.Query().Get("digest"); d != "" {
				p.mu.Lock()
				p.uploads[d] += p.session[r.URL.Path]
				delete(p.session, r.URL.Path)
				p.mu.Unlock()
			}
		}
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			p.mu.Lock()
			p.gets[d] += rec.n
			p.mu.Unlock()
		}
	}))
	t.Cleanup(srv.Close)
	p.host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

func (p *proxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gets, p.up, p.uploads = map[string]int64{}, 0, map[string]int64{}
}

// uploaded counts the listed blobs that were uploaded, and their bytes.
func (p *proxy) uploaded(digests []string) (n int, bytes int64) {
	return p.count(p.uploads, digests)
}

// downloaded counts the listed blobs that were downloaded, and their bytes.
func (p *proxy) downloaded(digests []string) (n int, bytes int64) {
	return p.count(p.gets, digests)
}

func (p *proxy) count(seen map[string]int64, digests []string) (n int, bytes int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, d := range digests {
		if b, ok := seen[d]; ok {
			n++
			bytes += b
		}
	}
	return n, bytes
}

type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

type countBody struct {
	io.ReadCloser
	add func(int64)
}

func (c *countBody) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.add(int64(n))
	return n, err
}

const cacheDockerfile = `ARG BASE
FROM ${BASE} AS build
WORKDIR /src
COPY deps.txt ./
RUN cat deps.txt > /deps.out && echo deps-installed >> /deps.out
COPY src/ ./src/
RUN cat src/*.txt > /out.txt && date +%s%N > /built-at
FROM ${BASE}
COPY --from=build /out.txt /app/out.txt
COPY static/ /app/static/
RUN echo final > /app/final.txt && date +%s%N > /app/built-at
`

var cacheFiles = map[string]string{
	"Dockerfile":    cacheDockerfile,
	"deps.txt":      "dep-a\ndep-b\n",
	"src/a.txt":     "source a\n",
	"src/b.txt":     "source b\n",
	"static/x.html": "<p>x</p>\n",
}

type buildReport struct {
	Steps []struct {
		Name       string `json:"name"`
		Cached     bool   `json:"cached"`
		Reason     string `json:"missReason"`
		Downloaded int64  `json:"bytesDownloaded"`
	} `json:"steps"`
	Totals struct {
		Steps      int   `json:"steps"`
		Cached     int   `json:"cached"`
		Downloaded int64 `json:"bytesDownloaded"`
		Uploaded   int64 `json:"bytesUploaded"`
	} `json:"totals"`
}

func readReport(t *testing.T, path string) buildReport {
	t.Helper()
	var r buildReport
	if err := json.Unmarshal([]byte(readFile(t, path)), &r); err != nil {
		t.Fatalf("report: %v", err)
	}
	return r
}

func layerDigests(t *testing.T, img v1.Image) []string {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		d, _ := l.Digest()
		out = append(out, d.String())
	}
	return out
}

// freshRunner is a new CI machine: no kiln state at all, and a fresh
// checkout of the context (same content, new mtimes).
func freshRunner(t testing.TB, src string, mtime time.Time) (dir string, env []string) {
	home := t.TempDir()
	return copyDir(t, src, mtime), []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
}

// The reason kiln exists: build on one runner with --cache-to, then on a
// brand-new runner every step is cached, no layer is downloaded, nothing is
// uploaded, and the pushed image is identical. Then one changed file
// rebuilds only what depends on it, and the report names it.
func TestFreshRunnerRegistryCache(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	p := newProxy(t, reg)
	src := writeContext(t, cacheFiles)
	cacheRef := p.host + "/cache/app:buildcache"
	baseArg := "BASE=" + strings.Replace(base, reg, p.host, 1)

	// Runner 1.
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", p.host+"/app:1", "--build-arg", baseArg,
		"--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")
	first := testenv.Pull(t, reg+"/app:1")
	firstDigest, _ := first.Digest()

	// Runner 2: everything from the registry cache, pushed to a new repo
	// (so blobs must be cross-mounted, not uploaded).
	p.reset()
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	report := filepath.Join(t.TempDir(), "report.json")
	res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", p.host+"/app2:2", "--build-arg", baseArg,
		"--cache-from", "type=registry,ref="+cacheRef, "--report", report, ".")
	second := testenv.Pull(t, reg+"/app2:2")
	secondDigest, _ := second.Digest()
	if firstDigest != secondDigest {
		t.Errorf("image digest changed on a fully cached build: %s then %s", firstDigest, secondDigest)
	}
	r := readReport(t, report)
	if r.Totals.Steps != 8 || r.Totals.Cached != 8 {
		t.Errorf("%d of %d steps cached, want all 8:\n%s", r.Totals.Cached, r.Totals.Steps, res.Stderr)
	}
	if n, b := p.downloaded(layerDigests(t, second)); n != 0 {
		t.Errorf("a fully cached build downloaded %d layer blobs (%d bytes)", n, b)
	}
	// Only the (small) config blob may travel: the new repository has
	// every layer by cross-repository mount.
	if n, b := p.uploaded(layerDigests(t, second)); n != 0 || r.Totals.Uploaded != 0 {
		t.Errorf("a fully cached build uploaded %d layer blobs, %d bytes (report says %d)", n, b, r.Totals.Uploaded)
	}

	// Runner 2 again, after one source file changed: only what reads it
	// (and what follows) runs, and the report says which file.
	if err := os.WriteFile(filepath.Join(dir, "src/b.txt"), []byte("source b, edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", p.host+"/app2:3", "--build-arg", baseArg,
		"--cache-from", "type=registry,ref="+cacheRef, "--report", report, ".")
	r = readReport(t, report)
	built := map[string]string{}
	for _, s := range r.Steps {
		if !s.Cached {
			built[s.Name] = s.Reason
		}
	}
	wantBuilt := []string{"COPY src/ ./src/", "RUN cat src/*.txt > /out.txt && date +%s%N > /built-at",
		"COPY --from=build /out.txt /app/out.txt", "COPY static/ /app/static/", "RUN echo final > /app/final.txt && date +%s%N > /app/built-at"}
	if len(built) != len(wantBuilt) {
		t.Errorf("built %v, want exactly %v", built, wantBuilt)
	}
	for _, w := range wantBuilt {
		if _, ok := built[w]; !ok {
			t.Errorf("%q did not rebuild", w)
		}
	}
	if why := built["COPY src/ ./src/"]; !strings.Contains(why, "src/b.txt") {
		t.Errorf("the report says COPY src/ rebuilt because %q; it must name src/b.txt", why)
	}
	tree := testenv.Tree(t, testenv.Pull(t, reg+"/app2:3"))
	if got := string(tree["app/out.txt"].Content); got != "source a\nsource b, edited\n" {
		t.Errorf("app/out.txt = %q", got)
	}
}

// The same with a local cache directory, as a CI system saves and
// restores it.
func TestFreshRunnerLocalCache(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	p := newProxy(t, reg)
	src := writeContext(t, cacheFiles)
	cacheDir := filepath.Join(t.TempDir(), "ci-cache")
	baseArg := "BASE=" + strings.Replace(base, reg, p.host, 1)

	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", p.host+"/local:1", "--build-arg", baseArg,
		"--cache-to", "type=local,dest="+cacheDir, ".")
	first, _ := testenv.Pull(t, reg+"/local:1").Digest()

	p.reset()
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	report := filepath.Join(t.TempDir(), "report.json")
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", p.host+"/local:2", "--build-arg", baseArg,
		"--cache-from", "type=local,src="+cacheDir, "--report", report, ".")
	second := testenv.Pull(t, reg+"/local:2")
	secondDigest, _ := second.Digest()
	if first != secondDigest {
		t.Errorf("image digest changed on a fully cached build: %s then %s", first, secondDigest)
	}
	r := readReport(t, report)
	if r.Totals.Cached != r.Totals.Steps || r.Totals.Steps != 8 {
		t.Errorf("%d of %d steps cached, want all 8", r.Totals.Cached, r.Totals.Steps)
	}
	if n, _ := p.downloaded(layerDigests(t, second)); n != 0 {
		t.Errorf("downloaded %d layer blobs from the registry", n)
	}
	if n, b := p.uploaded(layerDigests(t, second)); n != 0 {
		t.Errorf("uploaded %d layer blobs (%d bytes) although the registry had every one", n, b)
	}
}

// A moved tag invalidates: the base image is keyed by its manifest digest.
func TestMovedBaseTagInvalidates(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "moving")
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nCOPY a /a\nRUN cat /a > /b\n", "a": "a"})
	kiln(t, dir, nil, "build", "--progress=plain", ".")
	report := filepath.Join(t.TempDir(), "r.json")
	kiln(t, dir, nil, "build", "--progress=plain", "--report", report, ".")
	if r := readReport(t, report); r.Totals.Cached != 2 {
		t.Fatalf("rebuild cached %d of 2 steps", r.Totals.Cached)
	}
	testenv.BusyboxImage(t, reg, "moving", testenv.WithConfig(func(c *v1.Config) { c.Labels["moved"] = "yes" }))
	kiln(t, dir, nil, "build", "--progress=plain", "--report", report, ".")
	r := readReport(t, report)
	if r.Totals.Cached != 0 || !strings.Contains(r.Steps[0].Reason, "base image digest changed") {
		t.Errorf("after the tag moved: %d cached, first reason %q", r.Totals.Cached, r.Steps[0].Reason)
	}
}

// Two builds at once on one local store both succeed, and the store stays
// consistent: every record's blob is there and matches its digest.
func TestConcurrentBuildsShareLocalStore(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	var wg sync.WaitGroup
	results := make([]testenv.Result, 4)
	for i := range results {
		dir := writeContext(t, map[string]string{
			"Dockerfile": "FROM " + base + "\nCOPY shared.txt /s\nRUN cat /s > /shared.out\nCOPY own.txt /o\nRUN cat /o /s > /own.out\n",
			"shared.txt": "same in every build\n",
			"own.txt":    "build " + string(rune('a'+i)) + "\n",
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = testenv.Run(t, dir, env, "build", "--progress=plain", ".")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.ExitCode != 0 {
			t.Errorf("build %d failed:\n%s", i, r.Stderr)
		}
	}
	assertLocalStoreConsistent(t, filepath.Join(home, ".cache", "kiln", "cache"))
}

// assertLocalStoreConsistent reads every record's blob back.
func assertLocalStoreConsistent(t *testing.T, dir string) {
	t.Helper()
	local, err := cache.OpenLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := local.List(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("the local store is empty")
	}
	for _, e := range entries {
		l, err := local.Layer(t.Context(), e.Record)
		if err != nil {
			t.Errorf("record %s: %v", e.Record.Key, err)
			continue
		}
		rc, err := l.Compressed()
		if err != nil {
			t.Errorf("record %s: blob: %v", e.Record.Key, err)
			continue
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Errorf("record %s: blob does not match its digest: %v", e.Record.Key, err)
		}
		rc.Close()
	}
}

// A build interrupted while it pushes (image and cache) leaves no cache
// entry pointing at a missing blob, and the next build succeeds.
func TestInterruptedPushLeavesCachesConsistent(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	p := newProxy(t, reg)
	src := writeContext(t, cacheFiles)
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	baseArg := "BASE=" + strings.Replace(base, reg, p.host, 1)
	cacheRef := p.host + "/cache/interrupted:c"

	p.mu.Lock()
	p.stall = true
	p.mu.Unlock()
	cmd := exec.Command(testenv.Kiln(t), "build", "--progress=plain", "--push", "-t", p.host+"/interrupted:1",
		"--build-arg", baseArg, "--cache-to", "type=registry,ref="+cacheRef, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), env...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.stalled:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("the push never started:\n%s", out)
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("an interrupted push exited 0")
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatal("kiln did not stop within 30s of SIGINT")
	}
	p.mu.Lock()
	p.stall = false
	p.mu.Unlock()

	assertLocalStoreConsistent(t, filepath.Join(home, ".cache", "kiln", "cache"))
	// The registry cache was never written (its index goes last).
	if resp, err := http.Get("http://" + reg + "/v2/cache/interrupted/manifests/c"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("a registry cache index exists although its push was interrupted")
		}
	}
	report := filepath.Join(t.TempDir(), "r.json")
	kiln(t, src, env, "build", "--progress=plain", "--push", "-t", p.host+"/interrupted:1",
		"--build-arg", baseArg, "--cache-to", "type=registry,ref="+cacheRef, "--report", report, ".")
	if r := readReport(t, report); r.Totals.Cached != r.Totals.Steps {
		t.Errorf("after the interruption %d of %d steps were cached locally", r.Totals.Cached, r.Totals.Steps)
	}
	// The cache now works for a fresh runner.
	dir, fresh := freshRunner(t, src, time.Unix(1720000000, 0))
	kiln(t, dir, fresh, "build", "--progress=plain", "--build-arg", baseArg, "--cache-from", "type=registry,ref="+cacheRef, "--report", report, ".")
	if r := readReport(t, report); r.Totals.Cached != r.Totals.Steps {
		t.Errorf("fresh runner after the retry: %d of %d cached", r.Totals.Cached, r.Totals.Steps)
	}
}
