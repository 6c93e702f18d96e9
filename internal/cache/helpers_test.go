package cache

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// counter is a registry transport that counts the requests the tests make
// promises about, and can fail some.
type counter struct {
	mu sync.Mutex
	counts
	fail func(*http.Request) bool
}

// counts are the requests a counter saw.
type counts struct {
	blobGETs     int      // GET /v2/<repo>/blobs/sha256:…
	blobHEADs    int      // HEAD /v2/<repo>/blobs/sha256:…
	fetched      []string // the digests of those GETs, in order
	uploadStarts int      // POST /blobs/uploads/ without a mount
	mounts       int      // POST /blobs/uploads/?mount=
	mounted      int      // of which the registry answered 201 Created
	uploadBytes  int      // PATCH or PUT on an upload session
	manifestPUTs int
}

func (c *counter) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	p := req.URL.Path
	isMount := false
	switch {
	case req.Method == http.MethodGet && strings.Contains(p, "/blobs/sha256:"):
		c.blobGETs++
		c.fetched = append(c.fetched, p[strings.LastIndex(p, "/")+1:])
	case req.Method == http.MethodHead && strings.Contains(p, "/blobs/sha256:"):
		c.blobHEADs++
	case req.Method == http.MethodPost && strings.Contains(p, "/blobs/uploads/"):
		if req.URL.Query().Get("mount") != "" && req.URL.Query().Get("from") != "" {
			c.mounts++
			isMount = true
		} else {
			c.uploadStarts++
		}
	case (req.Method == http.MethodPatch || req.Method == http.MethodPut) && strings.Contains(p, "/blobs/uploads/"):
		c.uploadBytes++
	case req.Method == http.MethodPut && strings.Contains(p, "/manifests/"):
		c.manifestPUTs++
	}
	fail := c.fail
	c.mu.Unlock()
	if fail != nil && fail(req) {
		return nil, errors.New("injected failure")
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && isMount && resp.StatusCode == http.StatusCreated {
		c.mu.Lock()
		c.mounted++
		c.mu.Unlock()
	}
	return resp, err
}

func (c *counter) snapshot() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts
}

func (c *counter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counts = counts{}
}

// testKey makes a distinct valid key from a name.
func testKey(name string) digest.Digest {
	return digest.FromString("key:" + name)
}

// newLayer makes a random gzip layer whose compressed bytes are fixed
// (read once and served from memory).
func newLayer(t testing.TB) (v1.Layer, []byte) {
	t.Helper()
	l, err := random.Layer(2048, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	return l, readAll(t, l.Compressed)
}

func readAll(t testing.TB, open func() (io.ReadCloser, error)) []byte {
	t.Helper()
	rc, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// record makes a record for step with layer l (described from l).
func record(t testing.TB, name, step string, l v1.Layer, created time.Time) Record {
	t.Helper()
	r := Record{
		Key:     testKey(name),
		Created: created,
		StepID:  step,
		Inputs:  map[string]string{"arg:NAME": digest.FromString(name).String()},
	}
	if l != nil {
		d, err := describe(l)
		if err != nil {
			t.Fatal(err)
		}
		r.Layer = d
	}
	return r
}

// sameRecord compares what a store must give back exactly (LastUsed is
// the store's own).
func sameRecord(got, want Record) error {
	if got.Key != want.Key || got.Layer != want.Layer || got.StepID != want.StepID || !got.Created.Equal(want.Created) {
		return fmt.Errorf("got %+v, want %+v", got, want)
	}
	if len(got.Inputs) != len(want.Inputs) {
		return fmt.Errorf("inputs %v, want %v", got.Inputs, want.Inputs)
	}
	for k, v := range want.Inputs {
		if got.Inputs[k] != v {
			return fmt.Errorf("inputs %v, want %v", got.Inputs, want.Inputs)
		}
	}
	return nil
}

// failingLayer's compressed stream breaks after some bytes: a build killed
// while its layer was being stored.
type failingLayer struct {
	v1.Layer
	after int
}

func (f failingLayer) Compressed() (io.ReadCloser, error) {
	rc, err := f.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	return io.NopCloser(io.MultiReader(io.LimitReader(rc, int64(f.after)), errReader{})), nil
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("stream broken") }

func sha(b []byte) string {
	return fmt.Sprintf("sha256:%x", sha256.Sum256(b))
}

func mustEqualBytes(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s: got %d bytes (%s), want %d bytes (%s)", what, len(got), sha(got), len(want), sha(want))
	}
}
