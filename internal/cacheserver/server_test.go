package cacheserver_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"golang.org/x/crypto/bcrypt"

	"github.com/kiln-build/kiln/internal/cacheserver"
)

// start serves cfg on a free loopback port until the test ends.
func start(t *testing.T, cfg cacheserver.Config) string {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Root == "" && cfg.S3 == nil {
		cfg.Root = t.TempDir()
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := cacheserver.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ln.Addr().String()
}

func TestPushPull(t *testing.T) {
	addr := start(t, cacheserver.Config{})
	img, err := random.Image(4096, 3)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(addr + "/a/b:c")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(got); err != nil {
		t.Fatalf("pulled image: %v", err)
	}
}

// /metrics counts what a push and a pull moved, in Prometheus's format.
func TestMetrics(t *testing.T) {
	addr := start(t, cacheserver.Config{})
	scrape := func() string { return scrapeMetrics(t, addr) }
	value := metricValue
	before := scrape()
	img, _ := random.Image(100000, 2)
	ref, _ := name.ParseReference(addr + "/metrics/app:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	got, _ := remote.Image(ref)
	if err := validate.Image(got); err != nil {
		t.Fatal(err)
	}
	after := scrape()
	in := value(after, `kiln_cache_server_received_bytes_total{route="upload"}`) - value(before, `kiln_cache_server_received_bytes_total{route="upload"}`)
	out := value(after, `kiln_cache_server_sent_bytes_total{route="blob"}`) - value(before, `kiln_cache_server_sent_bytes_total{route="blob"}`)
	if in < 200000 || out < 200000 {
		t.Errorf("pushed and pulled two 100 kB layers: metrics say %v bytes in, %v out", in, out)
	}
	if value(after, `kiln_cache_server_requests_total{code="201",method="PUT",route="manifest"}`) < 1 {
		t.Errorf("no manifest PUT counted:\n%s", after)
	}
}

// A lookup of what the store lacks counts as a miss, of what it holds as a
// hit, per kind and method, so an operator sees whether runners find their
// cache.
func TestLookupMetrics(t *testing.T) {
	addr := start(t, cacheserver.Config{})
	img, _ := random.Image(1000, 1)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	md, _ := img.Digest()
	base := "http://" + addr + "/v2/lookups/app"
	request := func(method, url string) int {
		req, _ := http.NewRequest(method, url, nil)
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	lookups := func() map[string]float64 {
		text := scrapeMetrics(t, addr)
		got := map[string]float64{}
		for _, s := range []string{
			`kind="blob",method="GET",result="hit"`, `kind="blob",method="GET",result="miss"`,
			`kind="blob",method="HEAD",result="hit"`, `kind="blob",method="HEAD",result="miss"`,
			`kind="manifest",method="GET",result="hit"`, `kind="manifest",method="GET",result="miss"`,
		} {
			got[s] = metricValue(text, "kiln_cache_server_lookups_total{"+s+"}")
		}
		return got
	}
	delta := func(before, after map[string]float64) map[string]float64 {
		d := map[string]float64{}
		for k, v := range after {
			if v != before[k] {
				d[k] = v - before[k]
			}
		}
		return d
	}
	ask := func() {
		request(http.MethodHead, base+"/blobs/"+ld.String())
		request(http.MethodGet, base+"/blobs/"+ld.String())
		request(http.MethodGet, base+"/manifests/"+md.String())
	}

	before := lookups()
	ask()
	misses := lookups()
	want := map[string]float64{`kind="blob",method="GET",result="miss"`: 1, `kind="blob",method="HEAD",result="miss"`: 1, `kind="manifest",method="GET",result="miss"`: 1}
	if got := delta(before, misses); !maps.Equal(got, want) {
		t.Errorf("lookups of an empty store counted %v, want %v", got, want)
	}

	ref, _ := name.ParseReference(addr + "/lookups/app:1")
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	pushed := lookups()
	ask()
	if code := request(http.MethodGet, base+"/manifests/1"); code != http.StatusOK {
		t.Fatalf("GET manifest by tag: %d", code)
	}
	want = map[string]float64{`kind="blob",method="GET",result="hit"`: 1, `kind="blob",method="HEAD",result="hit"`: 1, `kind="manifest",method="GET",result="hit"`: 2}
	if got := delta(pushed, lookups()); !maps.Equal(got, want) {
		t.Errorf("lookups after the push counted %v, want %v", got, want)
	}
}

// scrapeMetrics returns the server's /metrics text.
func scrapeMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	return string(b)
}

// metricValue is series' value in Prometheus text, 0 when absent.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

func TestRefusesExposedWithoutAuth(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:5000", ":5000", "[::]:5000", "192.0.2.1:5000", "example.com:5000"} {
		_, err := cacheserver.New(context.Background(), cacheserver.Config{Addr: addr, Root: t.TempDir()})
		if !errors.Is(err, cacheserver.ErrExposed) {
			t.Errorf("%s without auth: %v, want ErrExposed", addr, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:5000", "[::1]:5000", "localhost:5000", "127.0.0.2:0"} {
		if _, err := cacheserver.New(context.Background(), cacheserver.Config{Addr: addr, Root: t.TempDir()}); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
	_, err := cacheserver.New(context.Background(), cacheserver.Config{Addr: "0.0.0.0:5000", Root: t.TempDir(), InsecureNoAuth: true})
	if err != nil {
		t.Errorf("--insecure-no-auth: %v", err)
	}
}

func htpasswd(t *testing.T, users map[string]string) string {
	t.Helper()
	var b strings.Builder
	for u, p := range users {
		h, err := bcrypt.GenerateFromPassword([]byte(p), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%s\n", u, h)
	}
	f := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(f, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestHtpasswd(t *testing.T) {
	addr := start(t, cacheserver.Config{Htpasswd: htpasswd(t, map[string]string{"ci": "s3cret"})})
	img, _ := random.Image(1024, 1)
	ref, _ := name.ParseReference(addr + "/app:1")

	for what, opt := range map[string]remote.Option{
		"no credentials":   remote.WithAuth(authn.Anonymous),
		"a wrong password": remote.WithAuth(&authn.Basic{Username: "ci", Password: "guess"}),
		"an unknown user":  remote.WithAuth(&authn.Basic{Username: "eve", Password: "s3cret"}),
	} {
		err := remote.Write(ref, img, opt)
		var terr *transport.Error
		if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
			t.Errorf("push with %s: %v, want 401", what, err)
		}
	}
	if _, err := remote.Head(ref, remote.WithAuth(authn.Anonymous)); err == nil {
		t.Errorf("anonymous HEAD answered")
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "ci", Password: "s3cret"})); err != nil {
		t.Fatalf("push with the right password: %v", err)
	}
}

func TestReadOnlyUser(t *testing.T) {
	addr := start(t, cacheserver.Config{
		Htpasswd: htpasswd(t, map[string]string{"ci": "rw-pass", "dev": "ro-pass"}),
		ReadOnly: []string{"dev"},
	})
	rw := remote.WithAuth(&authn.Basic{Username: "ci", Password: "rw-pass"})
	ro := remote.WithAuth(&authn.Basic{Username: "dev", Password: "ro-pass"})
	img, _ := random.Image(1024, 2)
	ref, _ := name.ParseReference(addr + "/app:1")
	if err := remote.Write(ref, img, rw); err != nil {
		t.Fatalf("read-write push: %v", err)
	}
	got, err := remote.Image(ref, ro)
	if err != nil {
		t.Fatalf("read-only pull: %v", err)
	}
	if err := validate.Image(got); err != nil {
		t.Fatalf("read-only pull: %v", err)
	}
	other, _ := random.Image(1024, 1)
	for _, r := range []string{addr + "/app:1", addr + "/elsewhere:1"} {
		ref, _ := name.ParseReference(r)
		err := remote.Write(ref, other, ro)
		var terr *transport.Error
		if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
			t.Errorf("read-only push to %s: %v, want 401", r, err)
		}
	}
	// Retagging is a manifest push; deleting is a write too.
	if err := remote.Tag(ref.Context().Tag("2"), img, ro); err == nil {
		t.Errorf("read-only user retagged an image")
	}
	d, _ := img.Digest()
	if err := remote.Delete(ref.Context().Digest(d.String()), ro); err == nil {
		t.Errorf("read-only user deleted a manifest")
	}
	// The image is untouched.
	if _, err := remote.Head(ref, rw); err != nil {
		t.Errorf("image after the read-only user's attempts: %v", err)
	}
	if _, err := remote.Head(ref.Context().Tag("2"), rw); err == nil {
		t.Errorf("the read-only user's tag exists")
	}
}

func TestHtpasswdFileMustExist(t *testing.T) {
	_, err := cacheserver.New(context.Background(), cacheserver.Config{Addr: "127.0.0.1:0", Root: t.TempDir(), Htpasswd: "/nonexistent/htpasswd"})
	if err == nil {
		t.Fatal("a missing htpasswd file was accepted (distribution would create one with a generated user)")
	}
}

// The cache server must build and run on machines without kiln's
// executors: it imports nothing else of kiln's.
func TestImportsNothingOfKiln(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/kiln-build/kiln/internal/cacheserver").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, "github.com/kiln-build/kiln/") && pkg != "github.com/kiln-build/kiln/internal/cacheserver" {
			t.Errorf("cacheserver depends on %s", pkg)
		}
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)

	addr := start(t, cacheserver.Config{TLSCert: certFile, TLSKey: keyFile})
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	img, _ := random.Image(1024, 1)
	ref, _ := name.ParseReference(addr + "/tls/app:1")
	if err := remote.Write(ref, img, remote.WithTransport(tr)); err != nil {
		t.Fatalf("push over TLS: %v", err)
	}
	// Plain HTTP gets no registry answer.
	resp, err := http.Get("http://" + addr + "/v2/")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP to a TLS server answered 200")
		}
	}
}
