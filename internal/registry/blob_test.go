package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Blob reads a blob through the registry's token auth and reports a
// missing one as the registry's 404, as remote.Layer would.
func TestBlob(t *testing.T) {
	ctx := context.Background()
	pw := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(pw, []byte(htpasswdLine), 0o644); err != nil {
		t.Fatal(err)
	}
	host := startRegistryWith(t, fmt.Sprintf("auth:\n  htpasswd:\n    realm: kiln-test\n    path: %s\n", pw))
	good := Options{Keychain: staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "kiln", Password: "s3cret"})}}
	img := mustRandom(t, 1)
	if _, err := Push(ctx, img, []string{host + "/app:v1"}, good); err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	h, _ := ls[0].Digest()
	rc, _ := ls[0].Compressed()
	want, _ := io.ReadAll(rc)
	d, err := name.NewDigest(host + "/app@" + h.String())
	if err != nil {
		t.Fatal(err)
	}
	body, err := Blob(ctx, d, good)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil || string(got) != string(want) {
		t.Fatalf("blob: %d bytes (%v), want the %d pushed", len(got), err, len(want))
	}

	missing, _ := name.NewDigest(host + "/app@sha256:" + strings.Repeat("0", 64))
	_, err = Blob(ctx, missing, good)
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusNotFound {
		t.Errorf("missing blob: err = %v, want the registry's 404", err)
	}
	if _, err := Blob(ctx, d, Options{Keychain: staticKeychain{authn.FromConfig(authn.AuthConfig{Username: "kiln", Password: "nope"})}}); err == nil {
		t.Error("wrong password: no error")
	}
}
