package cache

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// A registry that stops answering in the middle of an index read costs a
// retry, not a build that hangs; a body cut short is read again.
func TestRegistryReadRetries(t *testing.T) {
	host := testenv.Registry(t)
	ref := newRepo(host)
	putFlush(t, openReg(t, ref, nil), "a")

	target, _ := url.Parse("http://" + host)
	rp := httputil.NewSingleHostReverseProxy(target)
	var mode atomic.Value // "", "stall" or "truncate": applied to the next manifest GET once
	mode.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/manifests/") {
			switch mode.Swap("") {
			case "stall":
				<-r.Context().Done()
				return
			case "truncate":
				w.Header().Set("Content-Length", "4096")
				w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
				w.Write([]byte(`{"schemaVersion":2,`))
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	viaProxy := strings.Replace(ref, host, strings.TrimPrefix(srv.URL, "http://"), 1)

	for _, m := range []string{"stall", "truncate"} {
		t.Run(m, func(t *testing.T) {
			c := openReg(t, viaProxy, nil)
			c.readTimeout = 300 * time.Millisecond
			mode.Store(m)
			start := time.Now()
			idx, err := c.read(context.Background())
			if err != nil {
				t.Fatalf("read after one %s: %v", m, err)
			}
			if _, ok := idx.records[testKey("a")]; !ok {
				t.Errorf("the record is missing from the index read after a %s", m)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("read took %v", d)
			}
		})
	}
}

// A blob download cut short (a reset mid-body) is resumed: the layer
// reads whole and verifies; a corrupted one still fails its digest check.
func TestRegistryBlobReadResumes(t *testing.T) {
	host := testenv.Registry(t)
	ref := newRepo(host)
	recs := putFlush(t, openReg(t, ref, nil), "big")

	target, _ := url.Parse("http://" + host)
	rp := httputil.NewSingleHostReverseProxy(target)
	var mode atomic.Value // applied to the next blob GET once
	mode.Store("")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") && strings.Contains(r.URL.Path, recs["big"].Layer.Digest.Hex) {
			if m := mode.Swap(""); m != "" {
				rec := httptest.NewRecorder()
				rp.ServeHTTP(rec, r)
				body := rec.Body.Bytes()
				for k, v := range rec.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(rec.Code)
				if m == "truncate" {
					w.Write(body[:len(body)/2]) // under the full Content-Length
				} else {
					body[len(body)/2] ^= 1
					w.Write(body)
				}
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c := openReg(t, strings.Replace(ref, host, strings.TrimPrefix(srv.URL, "http://"), 1), nil)
	rec, err := c.Get(context.Background(), recs["big"].Key)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ mode, want string }{{"truncate", ""}, {"flip", "fails"}} {
		mode.Store(tt.mode)
		l, err := c.Layer(context.Background(), rec)
		if err != nil {
			t.Fatal(err)
		}
		err = drain(l.Uncompressed)
		if tt.want == "" && err != nil {
			t.Errorf("%s: a download cut short was not resumed: %v", tt.mode, err)
		}
		if tt.want != "" && err == nil {
			t.Errorf("%s: a corrupted download read without an error", tt.mode)
		}
	}
}
