package cli_test

import (
	"archive/tar"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
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

	gitDir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nADD git@127.0.0.1:repo.git /src\n"})
	res = testenv.Run(t, gitDir, nil, "build", "--progress=plain", ".")
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, "Dockerfile:2:") || !strings.Contains(res.Stderr, "not supported") {
		t.Errorf("ADD of a git URL must fail clearly as not supported yet; exit %d:\n%s", res.ExitCode, res.Stderr)
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
