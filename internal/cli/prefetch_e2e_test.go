package cli_test

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/testenv"
)

// stallProxy forwards to a registry, but while stalling it sends only the
// first half of one blob and then holds the connection open, as a
// registry that stopped sending would.
type stallProxy struct {
	host    string
	blob    string // "sha256:..."
	mu      sync.Mutex
	stall   bool
	stalled chan struct{}
	once    sync.Once
}

func newStallProxy(t *testing.T, registry, blob string) *stallProxy {
	p := &stallProxy{blob: blob, stall: true, stalled: make(chan struct{})}
	target, _ := url.Parse("http://" + registry)
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		stall := p.stall
		p.mu.Unlock()
		if !stall || r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, "/blobs/"+p.blob) {
			rp.ServeHTTP(w, r)
			return
		}
		resp, err := http.Get("http://" + registry + r.URL.Path)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		w.Header().Set("Content-Length", resp.Header.Get("Content-Length"))
		w.WriteHeader(resp.StatusCode)
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		p.once.Do(func() { close(p.stalled) })
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	p.host = strings.TrimPrefix(srv.URL, "http://")
	return p
}

// A build whose one stage fails while another stage's base is still
// downloading into the layer store: kiln stops the download, exits with
// the failure, and leaves no partial layer anywhere in its state; the next
// build extracts the base afresh and succeeds.
func TestFailedStageCancelsPrefetchCleanly(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	busybox, _ := testenv.BusyboxImage(t, reg, "busybox")

	// A large base: 8 MiB of random bytes in one gzip layer.
	big, err := random.Layer(8<<20, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, big)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	ref, err := name.ParseReference(reg+"/big:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	digest, _ := big.Digest()
	diffID, _ := big.DiffID()
	p := newStallProxy(t, reg, digest.String())
	bigRef := p.host + "/big:1"

	// The failing stage waits (at most 60 s) until the big layer's
	// download has stalled half-way, then fails.
	df := "FROM " + bigRef + " AS big\nCOPY a.txt /a.txt\n\n" +
		"FROM " + busybox + " AS bad\n" +
		"RUN --mount=type=bind,target=/ctx i=0; while [ ! -e /ctx/stalled ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; exit 3\n\n" +
		"FROM " + busybox + "\nCOPY --from=big /a.txt /a.txt\nCOPY --from=bad /ok /ok\n"
	dir := writeContext(t, map[string]string{"Dockerfile": df, "a.txt": "a\n"})
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	go func() {
		<-p.stalled
		os.WriteFile(filepath.Join(dir, "stalled"), nil, 0o644)
	}()
	start := time.Now()
	res := testenv.Run(t, dir, env, "build", "--progress=plain", ".")
	if res.ExitCode == 0 {
		t.Fatalf("the build succeeded; its bad stage exits 3:\n%s", res.Stderr)
	}
	select {
	case <-p.stalled:
	default:
		t.Fatalf("the big base was never downloading when the build failed:\n%s", res.Stderr)
	}
	if !strings.Contains(res.Stderr, "exit code: 3") {
		t.Errorf("the build failed, but not with the bad stage's exit 3:\n%s", res.Stderr)
	}
	t.Logf("failed after %v", time.Since(start).Round(time.Millisecond))

	state := filepath.Join(home, ".cache", "kiln")
	short := diffID.Hex[:16]
	filepath.WalkDir(state, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if strings.HasPrefix(d.Name(), "tmp-layer-") {
			t.Errorf("a partial layer is left in kiln's state: %s", path)
		}
		if d.Name() == short {
			t.Errorf("the big layer, never fully downloaded, is in the layer store: %s", path)
		}
		return nil
	})

	// The registry recovers, the bad stage is fixed: the next build
	// extracts the base afresh and succeeds.
	p.mu.Lock()
	p.stall = false
	p.mu.Unlock()
	df = strings.Replace(df, "exit 3", "touch /ok", 1)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	kiln(t, dir, env, "build", "--progress=plain", ".")
}
