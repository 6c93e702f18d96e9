package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// startRegistry runs the real distribution registry on a free loopback port
// and returns its HOST:PORT. It is stopped when the test ends.
func startRegistry(t *testing.T) string {
	t.Helper()
	return testenv.Registry(t)
}

// startRegistryWith is startRegistry with extra top-level YAML config.
func startRegistryWith(t *testing.T, extra string) string {
	t.Helper()
	return testenv.RegistryWithConfig(t, extra)
}

// counter counts requests by method and path kind, and can fail some.
type counter struct {
	mu      sync.Mutex
	uploads int // POSTs starting a blob upload
	puts    map[string]int
	fail    func(*http.Request) bool
}

func (c *counter) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	if req.Method == http.MethodPost && strings.Contains(req.URL.Path, "/blobs/uploads/") {
		c.uploads++
	}
	if req.Method == http.MethodPut && strings.Contains(req.URL.Path, "/manifests/") {
		if c.puts == nil {
			c.puts = map[string]int{}
		}
		c.puts[req.URL.Path[strings.LastIndex(req.URL.Path, "/")+1:]]++
	}
	fail := c.fail
	c.mu.Unlock()
	if fail != nil && fail(req) {
		return nil, errors.New("injected failure")
	}
	return http.DefaultTransport.RoundTrip(req)
}

func mustRandom(t *testing.T, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(512, layers)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestPushTagsAndReadBack(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t)
	img := mustRandom(t, 3)
	want, _ := img.Digest()
	tags := []string{host + "/app:v1", host + "/app:latest", host + "/other/app:v1"}
	got, err := Push(ctx, img, tags, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("Push returned %s, want %s", got, want)
	}
	for _, tag := range tags {
		back, err := Image(ctx, tag, v1.Platform{}, Options{})
		if err != nil {
			t.Fatalf("Image(%s): %v", tag, err)
		}
		if d, _ := back.Digest(); d != want {
			t.Errorf("%s has digest %s, want %s", tag, d, want)
		}
	}
}

func TestPushSkipsExistingBlobs(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t)
	base := mustRandom(t, 3)
	extra, err := random.Layer(256, "application/vnd.docker.image.rootfs.diff.tar.gzip")
	if err != nil {
		t.Fatal(err)
	}
	child, err := mutate.AppendLayers(base, extra)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name        string
		img         v1.Image
		wantUploads int
	}{
		{"first push uploads config and 3 layers", base, 4},
		{"same image again uploads nothing", base, 0},
		{"child uploads its new layer and config only", child, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &counter{}
			if _, err := Push(ctx, tt.img, []string{host + "/app:" + strings.ReplaceAll(tt.name[:5], " ", "")}, Options{Transport: c}); err != nil {
				t.Fatal(err)
			}
			if c.uploads != tt.wantUploads {
				t.Errorf("blob uploads = %d, want %d", c.uploads, tt.wantUploads)
			}
		})
	}
}

func TestPushFailureMovesNoTag(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t)
	old := mustRandom(t, 1)
	tag := host + "/app:v1"
	oldDigest, err := Push(ctx, old, []string{tag}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := &counter{fail: func(r *http.Request) bool {
		return r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/blobs/uploads/")
	}}
	if _, err := Push(ctx, mustRandom(t, 2), []string{tag, host + "/app:v2"}, Options{Transport: c}); err == nil {
		t.Fatal("push with failing uploads succeeded")
	}
	if len(c.puts) != 0 {
		t.Errorf("manifests were put despite failed blobs: %v", c.puts)
	}
	back, err := Image(ctx, tag, v1.Platform{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := back.Digest(); d != oldDigest {
		t.Errorf("%s moved to %s after a failed push", tag, d)
	}
	if _, err := Image(ctx, host+"/app:v2", v1.Platform{}, Options{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("v2 after failed push: err = %v, want ErrNotFound", err)
	}
}

func TestImageErrors(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t)
	if _, err := Push(ctx, mustRandom(t, 1), []string{host + "/app:v1"}, Options{}); err != nil {
		t.Fatal(err)
	}
	closed := freeAddr(t)
	tests := []struct {
		name     string
		ref      string
		wantIs   error
		wantText string
	}{
		{"missing tag", host + "/app:nope", ErrNotFound, "nope"},
		{"missing repository", host + "/nothing:v1", ErrNotFound, "nothing"},
		{"closed port", closed + "/app:v1", ErrUnreachable, closed},
		{"bad reference", "UPPER/Case:v1", nil, "parsing image reference"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := Image(ctx, tt.ref, v1.Platform{}, Options{})
			if err == nil {
				t.Fatal("no error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("err = %v, want errors.Is %v", err, tt.wantIs)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("err = %q, want it to mention %q", err, tt.wantText)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("took %v: permanent errors must not be retried", time.Since(start))
			}
		})
	}
}

func TestImageResolvesIndexByPlatform(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t)
	amd, arm := mustRandom(t, 1), mustRandom(t, 1)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	o := Options{}
	ref, err := o.Reference(host + "/multi:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx, o.RemoteOptions(ctx)...); err != nil {
		t.Fatal(err)
	}
	amdDigest, _ := amd.Digest()
	armDigest, _ := arm.Digest()
	tests := []struct {
		platform v1.Platform
		want     v1.Hash
		wantErr  error
	}{
		{v1.Platform{OS: "linux", Architecture: "amd64"}, amdDigest, nil},
		{v1.Platform{OS: "linux", Architecture: "arm64"}, armDigest, nil},
		{v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, armDigest, nil},
		{v1.Platform{OS: "linux", Architecture: "s390x"}, v1.Hash{}, ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.platform.String(), func(t *testing.T) {
			img, err := Image(ctx, host+"/multi:v1", tt.platform, o)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "linux/amd64") {
					t.Errorf("error %q should list the platforms the index has", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d, _ := img.Digest(); d != tt.want {
				t.Errorf("resolved %s, want %s", d, tt.want)
			}
		})
	}
}

func TestReferenceScheme(t *testing.T) {
	o := Options{Insecure: []string{"registry.corp:5000", "plain.example"}}
	tests := []struct {
		ref        string
		wantScheme string
	}{
		{"localhost:5000/app", "http"},
		{"127.0.0.5:5000/app:v1", "http"},
		{"[::1]:5000/app", "http"},
		{"registry.corp:5000/app", "http"},
		{"registry.corp:6000/app", "https"},
		{"plain.example:1234/app", "http"},
		{"plain.example/app", "http"},
		{"example.com/app", "https"},
		{"app", "https"},
	}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			r, err := o.Reference(tt.ref)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.Context().Scheme(); got != tt.wantScheme {
				t.Errorf("scheme = %s, want %s", got, tt.wantScheme)
			}
		})
	}
}

func TestPushMountsAcrossRepositories(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t)
	img := mustRandom(t, 3)
	c := &mountCounter{}
	tags := []string{host + "/one/app:v1", host + "/two/app:v1", host + "/three/app:v1"}
	if _, err := Push(ctx, img, tags, Options{Transport: c}); err != nil {
		t.Fatal(err)
	}
	// 3 layers + config into the first repository; the other two mount
	// the layers and upload only their (tiny) config.
	if c.uploads != 4+2 {
		t.Errorf("uploads = %d, want 6 (layers must be mounted, not re-sent)", c.uploads)
	}
	if c.mounts != 6 {
		t.Errorf("mount requests = %d, want 6", c.mounts)
	}
	for _, tag := range tags {
		back, err := Image(ctx, tag, v1.Platform{}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		ls, err := back.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			rc, err := l.Compressed()
			if err != nil {
				t.Fatalf("%s: layer unreadable after mount: %v", tag, err)
			}
			rc.Close()
		}
	}
}

// mountCounter tells blob uploads from cross-repository mounts.
type mountCounter struct {
	mu              sync.Mutex
	uploads, mounts int
}

func (c *mountCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPost && strings.Contains(req.URL.Path, "/blobs/uploads/") {
		c.mu.Lock()
		if req.URL.Query().Get("mount") != "" {
			c.mounts++
		} else {
			c.uploads++
		}
		c.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(req)
}

// htpasswdLine is user "kiln", password "s3cret" (bcrypt, cost 4).
const htpasswdLine = "kiln:$2b$04$TKHmwfPDRZpw5ed8pijzi.7q1/1sh1nQRCHZLsXDD36QPw/kUvqvS\n"

func TestImageAuth(t *testing.T) {
	ctx := context.Background()
	pw := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(pw, []byte(htpasswdLine), 0o644); err != nil {
		t.Fatal(err)
	}
	host := startRegistryWith(t, fmt.Sprintf("auth:\n  htpasswd:\n    realm: kiln-test\n    path: %s\n", pw))
	good := Options{Keychain: staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "kiln", Password: "s3cret"})}}
	if _, err := Push(ctx, mustRandom(t, 1), []string{host + "/app:v1"}, good); err != nil {
		t.Fatalf("push with good credentials: %v", err)
	}
	tests := []struct {
		name string
		o    Options
	}{
		{"wrong password", Options{Keychain: staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "kiln", Password: "nope"})}}},
		{"anonymous", Options{Keychain: staticKeychain{authn.Anonymous}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Image(ctx, host+"/app:v1", v1.Platform{}, tt.o)
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, ErrNotFound) || errors.Is(err, ErrUnreachable) {
				t.Errorf("auth failure misclassified: %v", err)
			}
			if !strings.Contains(err.Error(), "UNAUTHORIZED") {
				t.Errorf("err = %q, want the registry's UNAUTHORIZED diagnostic", err)
			}
		})
	}
	if _, err := Image(ctx, host+"/app:v1", v1.Platform{}, good); err != nil {
		t.Errorf("pull with good credentials: %v", err)
	}
}

type staticKeychain struct{ a authn.Authenticator }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) { return k.a, nil }

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// damager damages the body of the first responses to manifest and config
// GETs, as a proxy or a flaky link would.
type damager struct {
	mu      sync.Mutex
	left    int // responses still to damage
	damaged int
	config  string // the config blob's path, damaged too
}

func (d *damager) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil || req.Method != http.MethodGet || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.left == 0 || !(strings.Contains(req.URL.Path, "/manifests/") || req.URL.Path == d.config) {
		return resp, nil
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	// A manifest fetched by tag cannot be checked against a digest: a
	// flipped bit there may name another blob, or none. So manifests
	// arrive cut short (not valid JSON) and the config, which is checked
	// against its digest, with one flipped bit.
	if req.URL.Path == d.config {
		body[len(body)/2] ^= 0x04
	} else {
		body = body[:len(body)/2]
	}
	d.left--
	d.damaged++
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return resp, nil
}

func TestImageFetchesDamagedBodiesAgain(t *testing.T) {
	ctx := context.Background()
	host := startRegistry(t)
	img := mustRandom(t, 1)
	ref := host + "/app:v1"
	if _, err := Push(ctx, img, []string{ref}, Options{}); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	cfg, _ := img.ConfigName()
	configPath := "/v2/app/blobs/" + cfg.String()

	// Two damaged bodies (the manifest cut short, then the config with a
	// flipped bit) are fetched again: the build sees a good image.
	d := &damager{left: 2, config: configPath}
	got, err := Image(ctx, ref, v1.Platform{}, Options{Wrap: func(http.RoundTripper) http.RoundTripper { return d }})
	if err != nil {
		t.Fatalf("Image with %d damaged bodies: %v", d.damaged, err)
	}
	if dg, _ := got.Digest(); dg != want {
		t.Errorf("digest %s, want %s", dg, want)
	}
	if d.damaged != 2 {
		t.Errorf("%d bodies damaged, want 2", d.damaged)
	}

	// A body damaged every time fails, after a bounded number of fetches,
	// with an error naming the image.
	d = &damager{left: -1, config: configPath}
	start := time.Now()
	_, err = Image(ctx, ref, v1.Platform{}, Options{Wrap: func(http.RoundTripper) http.RoundTripper { return d }})
	if err == nil {
		t.Fatal("no error with every body damaged")
	}
	if !strings.Contains(err.Error(), "app:v1") {
		t.Errorf("error %q does not name the image", err)
	}
	if d.damaged != imageAttempts {
		t.Errorf("%d fetches of a body damaged every time, want %d", d.damaged, imageAttempts)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
}
