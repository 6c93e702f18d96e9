package cacheserver_test

import (
	"net/http"
	"os"
	"testing"

	"github.com/kiln-build/kiln/internal/cacheserver"
	"github.com/kiln-build/kiln/internal/testenv"
)

// systemCABundle is Debian's bundle of the system's roots.
const systemCABundle = "/etc/ssl/certs/ca-certificates.crt"

// TestMain runs every test as on a machine that names its CA bundle for
// the AWS tools, the case in which the AWS SDK rewrites shared HTTP state.
func TestMain(m *testing.M) {
	if os.Getenv("AWS_CA_BUNDLE") == "" {
		if _, err := os.Stat(systemCABundle); err == nil {
			os.Setenv("AWS_CA_BUNDLE", systemCABundle)
		}
	}
	os.Exit(m.Run())
}

// A second server on S3 in one process leaves the HTTP client the first
// one's requests are using untouched: the AWS SDK, left to apply
// AWS_CA_BUNDLE itself, rewrites http.DefaultClient's transport and its TLS
// roots on every new session, a data race with every request in flight.
func TestS3SecondServerLeavesSharedClientAlone(t *testing.T) {
	if os.Getenv("AWS_CA_BUNDLE") == "" && os.Getenv("CI") != "true" {
		t.Skip("no CA bundle to apply")
	}
	m := testenv.MinIO(t)
	s3, _, _ := s3StoreOn(t, m)
	start(t, cacheserver.Config{S3: s3})
	tr, ok := http.DefaultClient.Transport.(*http.Transport)
	if !ok || tr.TLSClientConfig == nil || tr.TLSClientConfig.RootCAs == nil {
		t.Fatalf("after the first S3 server, http.DefaultClient's transport is %T without the bundle's roots", http.DefaultClient.Transport)
	}
	roots := tr.TLSClientConfig.RootCAs
	start(t, cacheserver.Config{S3: s3, MaxSize: 1 << 30})
	if http.DefaultClient.Transport != tr || tr.TLSClientConfig.RootCAs != roots {
		t.Fatal("a second S3 server rewrote http.DefaultClient's transport while the first one's requests use it")
	}
}
