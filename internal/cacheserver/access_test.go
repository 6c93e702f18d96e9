package cacheserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kiln-build/kiln/internal/cacheserver"
)

func mustAccess(t *testing.T, specs ...string) map[string][]cacheserver.RepoAccess {
	t.Helper()
	m := map[string][]cacheserver.RepoAccess{}
	for _, s := range specs {
		u, g, err := cacheserver.ParseAccess(s)
		if err != nil {
			t.Fatal(err)
		}
		m[u] = g
	}
	return m
}

// A user limited to prefixes pushes and pulls there, pulls where it may
// only read, and is refused everywhere else, including next to its
// prefixes and through a mount from a repository it cannot read; its
// catalog names only what it may pull.
func TestRepositoryAccess(t *testing.T) {
	addr := start(t, cacheserver.Config{
		Htpasswd: htpasswd(t, map[string]string{"admin": "a-pass", "ci": "c-pass"}),
		Access:   mustAccess(t, "ci=rw:team-a/,ro:base/,ro:team-a/releases"),
	})
	admin := remote.WithAuth(&authn.Basic{Username: "admin", Password: "a-pass"})
	ci := remote.WithAuth(&authn.Basic{Username: "ci", Password: "c-pass"})
	push := func(repo string, opt remote.Option) error {
		img, _ := random.Image(1024, 1)
		ref, _ := name.ParseReference(addr + "/" + repo + ":1")
		return remote.Write(ref, img, opt)
	}
	for _, repo := range []string{"base/os", "team-b/app", "team-a/releases/app"} {
		if err := push(repo, admin); err != nil {
			t.Fatalf("unlimited user pushes %s: %v", repo, err)
		}
	}
	if err := push("team-a/app", ci); err != nil {
		t.Fatalf("push under rw:team-a/: %v", err)
	}
	if err := push("team-a", ci); err != nil {
		t.Fatalf("push to the prefix's own repository: %v", err)
	}
	for _, repo := range []string{"base/os", "team-a/app"} {
		ref, _ := name.ParseReference(addr + "/" + repo + ":1")
		img, err := remote.Image(ref, ci)
		if err == nil {
			err = validate.Image(img)
		}
		if err != nil {
			t.Errorf("pull %s: %v", repo, err)
		}
	}
	unauthorized := func(what string, err error) {
		t.Helper()
		var terr *transport.Error
		if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: %v, want 401", what, err)
		}
	}
	for _, repo := range []string{"team-b/app", "base/os", "base/new", "team-ab/app", "team-a/releases/app", "other"} {
		unauthorized("push to "+repo, push(repo, ci))
	}
	for _, repo := range []string{"team-b/app", "team-ab/app"} {
		ref, _ := name.ParseReference(addr + "/" + repo + ":1")
		_, err := remote.Head(ref, ci)
		unauthorized("HEAD "+repo, err)
		_, err = remote.List(ref.Context(), ci)
		unauthorized("tag list of "+repo, err)
	}
	ref, _ := name.ParseReference(addr + "/team-b/app:1")
	want := []string{"base/os", "team-a", "team-a/app", "team-a/releases/app"}
	if repos, err := remote.Catalog(context.Background(), ref.Context().Registry, ci); err != nil || !slices.Equal(repos, want) {
		t.Errorf("limited user's catalog: %v, %v; want %v", repos, err, want)
	}
	if repos, err := remote.Catalog(context.Background(), ref.Context().Registry, admin); err != nil || !slices.Equal(repos, append(want, "team-b/app")) {
		t.Errorf("unlimited user's catalog: %v, %v", repos, err)
	}
	// Page by page, the limited user's catalog never names what it
	// cannot reach, in a page or in the next page's link.
	var paged []string
	for next := "/v2/_catalog?n=3"; next != ""; {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+next, nil)
		req.SetBasicAuth("ci", "c-pass")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var page struct{ Repositories []string }
		err = json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || len(page.Repositories) > 3 {
			t.Fatalf("catalog page %s: %s, %v, %v", next, resp.Status, page.Repositories, err)
		}
		paged = append(paged, page.Repositories...)
		link := resp.Header.Get("Link")
		if strings.Contains(link, "team-b") {
			t.Errorf("catalog link names team-b: %s", link)
		}
		next = ""
		if l, ok := strings.CutPrefix(link, "<"); ok {
			next, _, _ = strings.Cut(l, ">")
		}
		if len(paged) > 10 {
			t.Fatal("catalog pages do not end")
		}
	}
	if !slices.Equal(paged, want) {
		t.Errorf("limited user's catalog, 3 a page: %v, want %v", paged, want)
	}
	_, err := remote.Catalog(context.Background(), ref.Context().Registry, remote.WithAuth(&authn.Basic{Username: "ci", Password: "guess"}))
	unauthorized("catalog with a wrong password", err)

	// A mount from team-b into team-a would copy a blob the user cannot
	// read into a repository it can.
	img, _ := remote.Image(ref, admin)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v2/team-a/app/blobs/uploads/?mount="+d.String()+"&from=team-b/app", nil)
	req.SetBasicAuth("ci", "c-pass")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("mount from team-b/app: %s, want 401", resp.Status)
	}
	if linked, err := hasBlob(addr, "team-a/app", d.String()); err != nil || linked {
		t.Errorf("the refused mount put team-b's blob into team-a/app (%v)", err)
	}
}

// hasBlob reports whether repo answers the unlimited user's HEAD of blob.
func hasBlob(addr, repo, blob string) (bool, error) {
	req, _ := http.NewRequest(http.MethodHead, "http://"+addr+"/v2/"+repo+"/blobs/"+blob, nil)
	req.SetBasicAuth("admin", "a-pass")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, err
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

func TestParseAccess(t *testing.T) {
	user, grants, err := cacheserver.ParseAccess("ci=rw:team-a/,ro:base")
	if err != nil || user != "ci" || len(grants) != 2 ||
		grants[0] != (cacheserver.RepoAccess{Prefix: "team-a", Write: true}) || grants[1] != (cacheserver.RepoAccess{Prefix: "base"}) {
		t.Fatalf("ParseAccess: %q %v %v", user, grants, err)
	}
	for spec, want := range map[string]string{
		"ci":                      "want USER=MODE:PREFIX",
		"=rw:a/":                  "want USER=MODE:PREFIX",
		"ci=":                     "want USER=MODE:PREFIX",
		"ci=team-a/":              "want ro:PREFIX or rw:PREFIX",
		"ci=wo:team-a/":           "want ro:PREFIX or rw:PREFIX",
		"ci=rw:/":                 "names no repository prefix",
		"ci=rw:Team-A/":           "is not a repository name prefix",
		"ci=rw:team-a//x":         "is not a repository name prefix",
		"ci=rw:team-a/,ro:team-a": "given twice",
	} {
		if _, _, err := cacheserver.ParseAccess(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseAccess(%q): %v, want an error saying %q", spec, err, want)
		}
	}
}

// A user named in --access or --read-only-user but missing from the
// htpasswd file is a typo that would leave the real user unlimited.
func TestAccessUsersMustExist(t *testing.T) {
	file := htpasswd(t, map[string]string{"ci": "x", "dev": "y"})
	for what, cfg := range map[string]cacheserver.Config{
		`--access user "cj"`:        {Htpasswd: file, Access: mustAccess(t, "cj=rw:a/")},
		`--read-only-user "deb"`:    {Htpasswd: file, ReadOnly: []string{"deb"}},
		`both --read-only-user`:     {Htpasswd: file, ReadOnly: []string{"ci"}, Access: mustAccess(t, "ci=ro:a/")},
		`--access needs --htpasswd`: {Access: mustAccess(t, "ci=ro:a/")},
	} {
		cfg.Addr, cfg.Root = "127.0.0.1:0", t.TempDir()
		if _, err := cacheserver.New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), what) {
			t.Errorf("%s: %v", what, err)
		}
	}
}
