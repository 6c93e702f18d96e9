package cli_test

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// ADD fetches http(s) URLs (here a server on loopback), verifies
// --checksum, and never extracts what it downloaded.
func TestAddURL(t *testing.T) {
	body := "downloaded content\n"
	archive := tarGz(t, map[string]string{"inside.txt": "x"})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", time.Unix(1600000000, 0).UTC().Format(http.TimeFormat))
		switch r.URL.Path {
		case "/files/tool.txt":
			fmt.Fprint(w, body)
		case "/files/pkg.tar.gz":
			w.Write(archive)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	sum := fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(body)))

	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf(
		"FROM scratch\nADD --checksum=%s %s/files/tool.txt /dl/\nADD %s/files/pkg.tar.gz /dl/renamed.tar.gz\n"+
			// --unpack (Dockerfile 1.17): a URL's archive extracted, a
			// local one kept whole.
			"ADD --unpack=true %s/files/pkg.tar.gz /unpacked/\nADD --unpack=false local.tar.gz /kept/\n", sum, srv.URL, srv.URL, srv.URL),
		"local.tar.gz": string(archive)})
	ociDir := filepath.Join(t.TempDir(), "oci")
	kiln(t, dir, nil, "build", "--progress=plain", "-o", "type=oci,tar=false,dest="+ociDir, ".")
	tree := treeFromLayout(t, ociDir)
	checkTree(t, tree, map[string]want{
		"dl/tool.txt":         {typ: tar.TypeReg, mode: 0o600, content: body},
		"dl/renamed.tar.gz":   {typ: tar.TypeReg, mode: 0o600, content: string(archive)},
		"unpacked/inside.txt": {typ: tar.TypeReg, mode: 0o640, uid: 7, gid: 8, content: "x"},
		"kept/local.tar.gz":   {typ: tar.TypeReg, mode: 0o644, content: string(archive)},
	})

	bad := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf(
		"FROM scratch\nADD --checksum=sha256:%s %s/files/tool.txt /dl/\n", strings.Repeat("0", 64), srv.URL)})
	res := testenv.Run(t, bad, nil, "build", "--progress=plain", "-o", "type=oci,tar=false,dest="+ociDir+"-bad", ".")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "Dockerfile:2:") || !strings.Contains(res.Stderr, "checksum") {
		t.Errorf("a checksum mismatch must fail naming line 2 and the checksum; exit %d:\n%s", res.ExitCode, res.Stderr)
	}

}

// ADD of a git source (here git's own smart HTTP server on loopback)
// copies the tree at the ref, as BuildKit: the commit's time on every
// file, no .git unless --keep-git-dir, #ref:subdir for a part of it; the
// key is the commit, so a moved branch is rebuilt, never served stale.
func TestAddGit(t *testing.T) {
	backend := testenv.Need(t, "/usr/lib/git-core/git-http-backend")
	testenv.Need(t, "git")
	repos := t.TempDir()
	work := filepath.Join(repos, "work")
	gitRun := func(args ...string) string {
		t.Helper()
		return testenv.Git(t, work, time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC), args...)
	}
	if err := os.MkdirAll(filepath.Join(work, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"README": "v1\n", "sub/tool.sh": "#!/bin/sh\n"} {
		if err := os.WriteFile(filepath.Join(work, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(work, "sub/tool.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	gitRun("init", "-q", "-b", "main")
	gitRun("add", ".")
	gitRun("commit", "-q", "-m", "one")
	gitRun("tag", "v1")
	gitRun("clone", "-q", "--bare", ".", filepath.Join(repos, "repo.git"))
	srv := httptest.NewServer(&cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + repos, "GIT_HTTP_EXPORT_ALL=1"}})
	t.Cleanup(srv.Close)
	remote := srv.URL + "/repo.git"

	df := "FROM scratch\nADD " + remote + "#main /src\nADD " + remote + "#v1:sub /sub/\nADD --keep-git-dir=true " + remote + "#v1 /kept\n"
	dir := writeContext(t, map[string]string{"Dockerfile": df})
	build := func() map[string]testenv.Entry {
		ociDir := filepath.Join(t.TempDir(), "oci")
		kiln(t, dir, nil, "build", "--progress=plain", "-o", "type=oci,tar=false,dest="+ociDir, ".")
		return treeFromLayout(t, ociDir)
	}
	tree := build()
	checkTree(t, tree, map[string]want{
		"src/README":      {typ: tar.TypeReg, mode: 0o644, content: "v1\n"},
		"src/sub/tool.sh": {typ: tar.TypeReg, mode: 0o755, content: "#!/bin/sh\n"},
		"sub/tool.sh":     {typ: tar.TypeReg, mode: 0o755, content: "#!/bin/sh\n"},
	})
	if _, ok := tree["src/.git"]; ok {
		t.Error("ADD of a git source kept .git without --keep-git-dir")
	}
	if _, ok := tree["kept/.git/HEAD"]; !ok {
		t.Error("--keep-git-dir=true dropped .git")
	}

	// The branch moves: the same Dockerfile must build the new commit.
	if err := os.WriteFile(filepath.Join(work, "README"), []byte("v2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	gitRun("commit", "-q", "-am", "two")
	gitRun("push", "-q", filepath.Join(repos, "repo.git"), "main")
	tree = build()
	if got := string(tree["src/README"].Content); got != "v2\n" {
		t.Errorf("after the branch moved, /src/README = %q, want the new commit's v2", got)
	}

	wrong := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nADD --checksum=" + strings.Repeat("0", 40) + " " + remote + "#main /src\n"})
	if res := testenv.Run(t, wrong, nil, "build", "--progress=plain", "."); res.ExitCode == 0 || !strings.Contains(res.Stderr, "checksum mismatch") {
		t.Errorf("ADD --checksum naming another commit must fail; exit %d:\n%s", res.ExitCode, res.Stderr)
	}
	right := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nADD --checksum=" + gitRun("rev-parse", "HEAD") + " " + remote + "#main /src\n"})
	kiln(t, right, nil, "build", "--progress=plain", ".")

	bad := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nADD " + remote + "#nosuchref /src\n"})
	res := testenv.Run(t, bad, nil, "build", "--progress=plain", ".")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "Dockerfile:2:") || !strings.Contains(res.Stderr, "nosuchref") {
		t.Errorf("ADD of a missing git ref must fail naming the line and the ref; exit %d:\n%s", res.ExitCode, res.Stderr)
	}
}

// COPY --parents (Dockerfile 1.19): sources keep their context paths, or
// their paths below a "/./" pivot, under the destination.
func TestCopyParents(t *testing.T) {
	dir := writeContext(t, map[string]string{
		"Dockerfile":      "FROM scratch\nCOPY --parents svc/api/go.mod svc/*/main.go /src/\nCOPY --parents ./vendor/./mod/x.go /deps\n",
		"svc/api/go.mod":  "module api\n",
		"svc/api/main.go": "package main\n",
		"svc/web/main.go": "package web\n",
		"svc/web/skip.md": "no\n",
		"vendor/mod/x.go": "package mod\n",
	})
	ociDir := filepath.Join(t.TempDir(), "oci")
	kiln(t, dir, nil, "build", "--progress=plain", "-o", "type=oci,tar=false,dest="+ociDir, ".")
	tree := treeFromLayout(t, ociDir)
	checkTree(t, tree, map[string]want{
		"src/svc/api/go.mod":  {typ: tar.TypeReg, mode: 0o644, content: "module api\n"},
		"src/svc/api/main.go": {typ: tar.TypeReg, mode: 0o644, content: "package main\n"},
		"src/svc/web/main.go": {typ: tar.TypeReg, mode: 0o644, content: "package web\n"},
		"deps/mod/x.go":       {typ: tar.TypeReg, mode: 0o644, content: "package mod\n"},
	})
	for _, p := range []string{"src/svc/web/skip.md", "deps/vendor"} {
		if _, ok := tree[p]; ok {
			t.Errorf("%s is in the image; COPY --parents copied more than its sources", p)
		}
	}
}
