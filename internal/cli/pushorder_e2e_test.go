package cli_test

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-build/kiln/internal/testenv"
)

// pushLog is a reverse proxy in front of a registry that records every
// request as it completes, in order, and can refuse some.
type pushLog struct {
	Host   string
	mu     sync.Mutex
	done   []pushReq
	refuse func(r *http.Request) bool
}

type pushReq struct {
	method, path, query string
	status              int
}

func newPushLog(t *testing.T, registry string, refuse func(r *http.Request) bool) *pushLog {
	t.Helper()
	target, err := url.Parse("http://" + registry)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	p := &pushLog{refuse: refuse}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		if p.refuse != nil && p.refuse(r) {
			http.Error(rec, `{"errors":[{"code":"DENIED","message":"refused by the test"}]}`, http.StatusForbidden)
		} else {
			rp.ServeHTTP(rec, r)
		}
		p.mu.Lock()
		p.done = append(p.done, pushReq{r.Method, r.URL.Path, r.URL.RawQuery, rec.status})
		p.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	p.Host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

func (p *pushLog) requests() []pushReq {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]pushReq(nil), p.done...)
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// isManifestPut reports whether q wrote a manifest into repo.
func (q pushReq) isManifestPut(repo string) bool {
	return q.method == http.MethodPut && strings.HasPrefix(q.path, "/v2/"+repo+"/manifests/")
}

// showsBlob reports whether q, done, proves blob d is in repo: an upload
// finished with it, a mount of it, or a HEAD that found it.
func (q pushReq) showsBlob(repo, d string) bool {
	v, _ := url.ParseQuery(q.query)
	switch {
	case q.method == http.MethodPut && strings.HasPrefix(q.path, "/v2/"+repo+"/blobs/uploads/"):
		return q.status == http.StatusCreated && v.Get("digest") == d
	case q.method == http.MethodPost && q.path == "/v2/"+repo+"/blobs/uploads/":
		return q.status == http.StatusCreated && v.Get("mount") == d
	case q.method == http.MethodHead && q.path == "/v2/"+repo+"/blobs/"+d:
		return q.status == http.StatusOK
	}
	return false
}

// The image's blobs may go up while the cache is written, but its manifest
// only once every one of its blobs is in the repository, and its tag only
// after the cache export finished: a registry never holds a manifest
// naming a blob it lacks, and a build never tags an image before it knows
// the build succeeded.
func TestPushSendsManifestAfterBlobsAndCache(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	p := newPushLog(t, reg, nil)
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + strings.Replace(base, reg, p.Host, 1) + "\nRUN head -c 200000 /dev/urandom > /r\nCOPY f /f\n",
		"f":          "f\n",
	})
	kiln(t, dir, nil, "build", "--progress=plain", "--push", "-t", p.Host+"/order/app:ok",
		"--cache-to", "type=registry,ref="+p.Host+"/order/cache:c,mode=max", ".")

	ref, err := name.ParseReference(reg+"/order/app:ok", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("the image was not pushed: %v", err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	blobs := []string{m.Config.Digest.String()}
	for _, l := range m.Layers {
		blobs = append(blobs, l.Digest.String())
	}

	reqs := p.requests()
	firstManifest, cacheDone := -1, -1
	for i, q := range reqs {
		if firstManifest < 0 && q.isManifestPut("order/app") {
			firstManifest = i
		}
		if q.isManifestPut("order/cache") && q.status == http.StatusCreated {
			cacheDone = i
		}
	}
	if firstManifest < 0 || cacheDone < 0 {
		t.Fatalf("no manifest PUT seen (image %d, cache %d) in %d requests", firstManifest, cacheDone, len(reqs))
	}
	if firstManifest < cacheDone {
		t.Errorf("the image's manifest (request %d) went up before the cache export finished (request %d)", firstManifest, cacheDone)
	}
	for _, d := range blobs {
		seen := false
		for _, q := range reqs[:firstManifest] {
			if q.showsBlob("order/app", d) {
				seen = true
				break
			}
		}
		if !seen {
			t.Errorf("blob %s was not in order/app before its manifest was pushed (request %d)", d, firstManifest)
		}
	}
	// The overlap itself: the config blob (no cache record holds it) goes
	// up during the cache export, not after it.
	for i, q := range reqs {
		if q.showsBlob("order/app", m.Config.Digest.String()) {
			t.Logf("config blob in order/app at request %d, cache manifest at %d, image manifest at %d", i, cacheDone, firstManifest)
			break
		}
	}
}

// A cache export that fails at its very end (the registry refuses the
// cache manifest, after every cache blob and the image's own blobs went
// up) fails the build and leaves no image behind: no manifest was sent to
// the image's repository, and its tag does not exist.
func TestFailedCacheExportLeavesNoTag(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	p := newPushLog(t, reg, func(r *http.Request) bool {
		return r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/v2/late/cache/manifests/")
	})
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + strings.Replace(base, reg, p.Host, 1) + "\nRUN head -c 200000 /dev/urandom > /r\n",
	})
	res := testenv.Run(t, dir, nil, "build", "--progress=plain", "--push", "-t", p.Host+"/late/app:failed",
		"--cache-to", "type=registry,ref="+p.Host+"/late/cache:c,mode=max", ".")
	if res.ExitCode == 0 {
		t.Fatalf("a refused cache manifest did not fail the build:\n%s", res.Stderr)
	}
	if !strings.Contains(res.Stderr, "--cache-to") {
		t.Errorf("the error does not name the --cache-to that failed:\n%s", res.Stderr)
	}
	refused := false
	for i, q := range p.requests() {
		if q.isManifestPut("late/app") {
			t.Errorf("request %d put a manifest into the image's repository of a failed build: %+v", i, q)
		}
		if q.isManifestPut("late/cache") && q.status == http.StatusForbidden {
			refused = true
		}
	}
	if !refused {
		t.Errorf("the cache manifest was never refused: the test did not test a late failure")
	}
	if exists(t, reg+"/late/app:failed") {
		t.Errorf("a build whose cache export failed left its tag")
	}
}
