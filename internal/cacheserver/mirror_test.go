package cacheserver_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kiln-build/kiln/internal/cacheserver"
)

// A base image pulled once through --upstream is served again, whole, with
// the upstream stopped; the mirror refuses pushes; other repositories are
// the server's own.
func TestUpstreamMirror(t *testing.T) {
	upstream := httptest.NewServer(registry.New())
	defer upstream.Close()
	img, _ := random.Image(50_000, 2)
	upRef, _ := name.ParseReference(strings.TrimPrefix(upstream.URL, "http://") + "/library/base:1")
	if err := remote.Write(upRef, img); err != nil {
		t.Fatal(err)
	}
	up, err := cacheserver.ParseUpstream("hub=" + upstream.URL)
	if err != nil {
		t.Fatal(err)
	}
	addr := start(t, cacheserver.Config{Upstreams: []cacheserver.Upstream{up}})
	ref, _ := name.ParseReference(addr + "/hub/library/base:1")
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull through the mirror: %v", err)
	}
	if err := validate.Image(got); err != nil {
		t.Fatalf("pull through the mirror: %v", err)
	}
	want, _ := img.Digest()

	upstream.Close()
	again, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull through the mirror with the upstream stopped: %v", err)
	}
	if err := validate.Image(again); err != nil {
		t.Fatalf("pull through the mirror with the upstream stopped: %v", err)
	}
	if d, _ := again.Digest(); d != want {
		t.Errorf("mirror served %s, upstream had %s", d, want)
	}

	other, _ := random.Image(1000, 1)
	if err := remote.Write(ref, other); err == nil {
		t.Errorf("a push into the mirror was accepted")
	}
	own, _ := name.ParseReference(addr + "/ci/app:1")
	if err := remote.Write(own, other); err != nil {
		t.Errorf("push beside the mirror: %v", err)
	}
}

func TestParseUpstream(t *testing.T) {
	for _, bad := range []string{"", "hub", "=http://x", "hub=ftp://x", "hub=notaurl", "hub=http://"} {
		if _, err := cacheserver.ParseUpstream(bad); err == nil {
			t.Errorf("ParseUpstream(%q) accepted", bad)
		}
	}
	got, err := cacheserver.ParseUpstream("/docker.io/=https://registry-1.docker.io")
	if err != nil || got.Prefix != "docker.io" || got.URL != "https://registry-1.docker.io" {
		t.Errorf("ParseUpstream: %+v, %v", got, err)
	}
}

// A prefix in --access names a mirrored repository as clients do, with
// the mirror's prefix, though the mirror itself sees it without.
func TestUpstreamMirrorAccess(t *testing.T) {
	upstream := httptest.NewServer(registry.New())
	defer upstream.Close()
	host := strings.TrimPrefix(upstream.URL, "http://")
	for _, repo := range []string{"library/base", "other/base"} {
		img, _ := random.Image(1000, 1)
		ref, _ := name.ParseReference(host + "/" + repo + ":1")
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	up, _ := cacheserver.ParseUpstream("hub=" + upstream.URL)
	addr := start(t, cacheserver.Config{
		Upstreams: []cacheserver.Upstream{up},
		Htpasswd:  htpasswd(t, map[string]string{"ci": "pass"}),
		Access:    mustAccess(t, "ci=ro:hub/library/,rw:ci/"),
	})
	ci := remote.WithAuth(&authn.Basic{Username: "ci", Password: "pass"})
	ref, _ := name.ParseReference(addr + "/hub/library/base:1")
	if img, err := remote.Image(ref, ci); err != nil {
		t.Errorf("pull under ro:hub/library/: %v", err)
	} else if err := validate.Image(img); err != nil {
		t.Errorf("pull under ro:hub/library/: %v", err)
	}
	ref, _ = name.ParseReference(addr + "/hub/other/base:1")
	_, err := remote.Image(ref, ci)
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
		t.Errorf("pull of hub/other/base outside the user's prefixes: %v, want 401", err)
	}
}
