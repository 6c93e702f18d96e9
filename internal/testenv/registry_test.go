package testenv

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestRegistryPushPull(t *testing.T) {
	host := Registry(t)
	if h, _, err := net.SplitHostPort(host); err != nil || h != "127.0.0.1" {
		t.Fatalf("Registry() = %q, want 127.0.0.1:PORT", host)
	}

	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/test/random:v1"
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push: %v", err)
	}

	got := Pull(t, ref)
	// Reading every layer back checks the blobs, not just the manifest.
	if n := len(Tree(t, got)); n == 0 {
		t.Errorf("pulled image has an empty tree")
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Errorf("pulled digest %s, pushed %s", d, want)
	}
}

func TestRegistryStoppedAfterTest(t *testing.T) {
	var host string
	t.Run("inner", func(t *testing.T) {
		host = Registry(t)
	})
	if host == "" {
		t.Skip("inner test did not start a registry")
	}
	client := &http.Client{Timeout: time.Second}
	resp, err := client.Get("http://" + host + "/v2/")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("registry %s still answers after its test ended", host)
	}
}

func TestRegistriesAreIndependent(t *testing.T) {
	a, b := Registry(t), Registry(t)
	if a == b {
		t.Fatalf("two registries share address %s", a)
	}
	BusyboxImage(t, a, "only/in-a")
	ref, err := name.ParseReference(b+"/only/in-a:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Head(ref, remote.WithContext(t.Context())); err == nil {
		t.Errorf("image pushed to %s is visible in %s", a, b)
	}
}
