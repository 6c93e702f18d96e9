package cacheserver_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/cacheserver"
	"github.com/kiln-build/kiln/internal/testenv"
)

// conformancePackage is the OCI distribution-spec conformance suite, a
// program pinned as a tool in go.mod so CI builds it from the module cache
// like any dependency.
const conformancePackage = "github.com/opencontainers/distribution-spec/conformance"

// The OCI distribution-spec conformance suite passes against the server on
// its disk store and on an S3 bucket (a real MinIO): pull, push (monolithic, chunked, streamed, out of order,
// cancelled), cross-repository and anonymous mounts, content discovery and
// content management (deletes). Disabled, because distribution v3.1 does
// not implement them: the referrers API (and so the OCI-Subject header) and
// sha512 digests.
func TestOCIConformance(t *testing.T) {
	goBin := testenv.Need(t, "go")
	bin := filepath.Join(t.TempDir(), "conformance")
	build := exec.Command(goBin, "build", "-o", bin, conformancePackage)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the conformance suite: %v\n%s", err, out)
	}
	t.Run("disk", func(t *testing.T) {
		conformance(t, bin, start(t, cacheserver.Config{}))
	})
	t.Run("s3", func(t *testing.T) {
		conformance(t, bin, start(t, cacheserver.Config{S3: s3Store(t)}))
	})
}

func conformance(t *testing.T, bin, addr string) {
	results := t.TempDir()
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(),
		"OCI_REGISTRY="+addr,
		"OCI_TLS=disabled",
		"OCI_RESULTS_DIR="+results,
		"OCI_LOG=warn",
		"OCI_API_PULL=true",
		"OCI_API_PUSH=true",
		"OCI_API_BLOBS_DELETE=true",
		"OCI_API_BLOBS_UPLOAD_CANCEL=true",
		"OCI_API_MANIFESTS_DELETE=true",
		"OCI_API_TAGS_DELETE=true",
		"OCI_API_TAGS_LIST=true",
		"OCI_API_REFERRER=false",
		"OCI_DATA_SUBJECT=false",
		"OCI_DATA_SUBJECT_MISSING=false",
		"OCI_DATA_SUBJECT_LIST=false",
		"OCI_DATA_SHA512=false",
	)
	out, err := cmd.CombinedOutput()
	// The suite exits 0 without testing anything when it cannot load its
	// configuration: the results file is the proof it ran.
	if _, serr := os.Stat(filepath.Join(results, "results.yaml")); serr != nil {
		t.Fatalf("the conformance suite wrote no results (%v):\n%s", serr, out)
	}
	if err != nil || !strings.Contains(string(out), "FAIL..........................:          0") {
		t.Fatalf("OCI conformance: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
