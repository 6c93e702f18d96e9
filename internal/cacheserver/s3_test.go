package cacheserver_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kiln-build/kiln/internal/cacheserver"
	"github.com/kiln-build/kiln/internal/testenv"
)

// s3Store starts a MinIO server with a fresh bucket, points this process's
// AWS settings at it, and returns a store under a prefix of that bucket.
func s3Store(t *testing.T) *cacheserver.S3 {
	t.Helper()
	s, _, _ := s3StoreOn(t, testenv.MinIO(t))
	return s
}

func s3StoreOn(t *testing.T, m *testenv.MinIOServer) (*cacheserver.S3, string, string) {
	t.Helper()
	m.Setenv(t)
	bucket := m.Bucket(t)
	s, err := cacheserver.ParseS3("s3://"+bucket+"/ci/cache", os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	return s, bucket, "ci/cache/"
}

func TestParseS3(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	minio := env("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
	for _, tc := range []struct {
		url    string
		getenv func(string) string
		want   cacheserver.S3
		err    string
	}{
		{url: "s3://cache/team/ci", getenv: minio, want: cacheserver.S3{Bucket: "cache", Prefix: "team/ci", Endpoint: "http://127.0.0.1:9000", Region: "us-east-1"}},
		{url: "s3://cache", getenv: minio, want: cacheserver.S3{Bucket: "cache", Endpoint: "http://127.0.0.1:9000", Region: "us-east-1"}},
		{url: "s3://cache/", getenv: env("AWS_REGION", "eu-west-1"), want: cacheserver.S3{Bucket: "cache", Region: "eu-west-1"}},
		{url: "s3://cache/p", getenv: env("AWS_DEFAULT_REGION", "eu-west-2"), want: cacheserver.S3{Bucket: "cache", Prefix: "p", Region: "eu-west-2"}},
		// The S3-specific endpoint and AWS_REGION win, as in the AWS tools.
		{url: "s3://cache/p", getenv: env("AWS_ENDPOINT_URL", "http://a:1", "AWS_ENDPOINT_URL_S3", "https://b:2", "AWS_REGION", "r1", "AWS_DEFAULT_REGION", "r2"),
			want: cacheserver.S3{Bucket: "cache", Prefix: "p", Endpoint: "https://b:2", Region: "r1"}},
		{url: "s3://cache/p", getenv: env(), err: "set AWS_REGION"},
		{url: "/var/lib/cache", getenv: minio, err: "want s3://BUCKET"},
		{url: "gs://cache/p", getenv: minio, err: "want s3://BUCKET"},
		{url: "s3:cache", getenv: minio, err: "want s3://BUCKET"},
		{url: "s3://cache:9000/p", getenv: minio, err: "AWS_ENDPOINT_URL"},
		{url: "s3://key:secret@cache/p", getenv: minio, err: "AWS_ACCESS_KEY_ID"},
		{url: "s3://cache/p?region=x", getenv: minio, err: "nothing else"},
		{url: "s3://Cache/p", getenv: minio, err: "not a bucket name"},
		{url: "s3://", getenv: minio, err: "not a bucket name"},
		{url: "s3://cache/a/../b", getenv: minio, err: "not a clean path"},
		{url: "s3://cache/a//b", getenv: minio, err: "not a clean path"},
		{url: "s3://cache/p", getenv: env("AWS_ENDPOINT_URL", "127.0.0.1:9000"), err: "want http(s)://HOST[:PORT]"},
		{url: "s3://cache/p", getenv: env("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/bucket"), err: "want http(s)://HOST[:PORT]"},
	} {
		got, err := cacheserver.ParseS3(tc.url, tc.getenv)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseS3(%q) = %v, %v; want an error containing %q", tc.url, got, err, tc.err)
			}
			continue
		}
		if err != nil || *got != tc.want {
			t.Errorf("ParseS3(%q) = %+v, %v; want %+v", tc.url, got, err, tc.want)
		}
	}
}

// A store in a bucket and in a directory at once is refused.
func TestS3RefusesRootToo(t *testing.T) {
	s3 := &cacheserver.S3{Bucket: "cache", Endpoint: "http://127.0.0.1:1", Region: "us-east-1"}
	if _, err := cacheserver.New(t.Context(), cacheserver.Config{Addr: "127.0.0.1:0", S3: s3, Root: t.TempDir()}); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("New with --root and --storage = %v, want a refusal", err)
	}
}

// A server whose store it cannot reach fails at start-up, naming the
// store, instead of failing every runner's first push.
func TestS3Unreachable(t *testing.T) {
	m := testenv.MinIO(t)
	m.Setenv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	for _, tc := range []struct {
		name string
		s3   cacheserver.S3
		want string
	}{
		{"closed port", cacheserver.S3{Bucket: "cache", Endpoint: closed, Region: "us-east-1"}, "connection refused"},
		{"missing bucket", cacheserver.S3{Bucket: "no-such-bucket", Endpoint: m.Endpoint, Region: "us-east-1"}, "NoSuchBucket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			begin := time.Now()
			_, err := cacheserver.New(t.Context(), cacheserver.Config{Addr: "127.0.0.1:0", S3: &tc.s3})
			if err == nil || !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "s3://"+tc.s3.Bucket) {
				t.Fatalf("New = %v, want an error naming the store, saying unreachable and %q", err, tc.want)
			}
			if d := time.Since(begin); d > 40*time.Second {
				t.Errorf("took %s to give up", d)
			}
		})
	}
	t.Run("wrong credentials", func(t *testing.T) {
		s, _, _ := s3StoreOn(t, m)
		t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-key")
		_, err := cacheserver.New(t.Context(), cacheserver.Config{Addr: "127.0.0.1:0", S3: s})
		if err == nil || !strings.Contains(err.Error(), "unreachable") || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
			t.Fatalf("New = %v, want a refusal of the credentials", err)
		}
	})
}

// Two servers on one bucket serve each other's writes: manifests (an image
// and an index), every blob, and tag lists, in both directions.
func TestS3TwoServersOneBucket(t *testing.T) {
	s3 := s3Store(t)
	a := start(t, cacheserver.Config{S3: s3})
	b := start(t, cacheserver.Config{S3: s3})

	push := func(via, repo string, tags ...string) v1.Hash {
		t.Helper()
		img, err := random.Image(64<<10, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, tag := range tags {
			ref, _ := name.ParseReference(via + "/" + repo + ":" + tag)
			if err := remote.Write(ref, img); err != nil {
				t.Fatalf("push %s: %v", ref, err)
			}
		}
		d, _ := img.Digest()
		return d
	}
	pull := func(via, repo, tag string, want v1.Hash) {
		t.Helper()
		ref, _ := name.ParseReference(via + "/" + repo + ":" + tag)
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		if d, _ := img.Digest(); d != want {
			t.Fatalf("pull %s = %s, pushed %s", ref, d, want)
		}
		// Reads every blob and checks it against its digest.
		if err := validate.Image(img); err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
	}
	tags := func(via, repo string) []string {
		t.Helper()
		r, _ := name.NewRepository(via + "/" + repo)
		got, err := remote.List(r)
		if err != nil {
			t.Fatalf("list %s: %v", r, err)
		}
		slices.Sort(got)
		return got
	}

	app := push(a, "team/app", "v1", "main")
	pull(b, "team/app", "v1", app)
	pull(b, "team/app", "main", app)
	if got := tags(b, "team/app"); !slices.Equal(got, []string{"main", "v1"}) {
		t.Errorf("tags through B = %v, want [main v1]", got)
	}

	// The reverse, into the same repository and a new one.
	app2 := push(b, "team/app", "v2")
	base := push(b, "team/base", "latest")
	pull(a, "team/app", "v2", app2)
	pull(a, "team/base", "latest", base)
	if got := tags(a, "team/app"); !slices.Equal(got, []string{"main", "v1", "v2"}) {
		t.Errorf("tags through A = %v, want [main v1 v2]", got)
	}

	// A multi-platform index pushed through B pulls whole through A.
	idx, err := random.Index(32<<10, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(b + "/team/multi:v1")
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	refA, _ := name.ParseReference(a + "/team/multi:v1")
	got, err := remote.Index(refA)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(got); err != nil {
		t.Errorf("index through A: %v", err)
	}

	// A delete through A is seen by B.
	d, _ := name.NewDigest(a + "/team/base@" + base.String())
	if err := remote.Delete(d); err != nil {
		t.Fatal(err)
	}
	dB, _ := name.NewDigest(b + "/team/base@" + base.String())
	if _, err := remote.Head(dB); err == nil {
		t.Errorf("B still serves %s deleted through A", dB)
	}
}

// An upload cut off mid-stream, one abandoned before its final PUT, and
// one completed with a wrong digest leave nothing any server serves, and
// no blob in the bucket: a manifest naming the blob is refused, and the
// blob pushes cleanly afterwards.
func TestS3InterruptedUpload(t *testing.T) {
	m := testenv.MinIO(t)
	s3, bucket, prefix := s3StoreOn(t, m)
	a := start(t, cacheserver.Config{S3: s3})
	b := start(t, cacheserver.Config{S3: s3})

	blob := make([]byte, 6<<20) // above S3's 5 MiB multipart minimum
	if _, err := rand.Read(blob); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(blob)
	dgst := "sha256:" + hex.EncodeToString(sum[:])

	// Cut off: the client's body fails after half the bytes.
	loc := startUpload(t, a, "team/app")
	_, err := do(t, http.MethodPatch, loc, &failingReader{data: blob[:3<<20]}, "application/octet-stream")
	if err == nil {
		t.Fatal("PATCH with a failing body succeeded")
	}
	// Abandoned: every byte sent, never committed.
	loc = startUpload(t, b, "team/app")
	if resp, err := do(t, http.MethodPatch, loc, bytes.NewReader(blob), "application/octet-stream"); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH = %v, %v", resp, err)
	}
	// Wrong digest: the server must check the bytes, not trust the name.
	loc = startUpload(t, a, "team/app")
	wrong := blob[:len(blob)-1]
	if resp, err := do(t, http.MethodPut, withDigest(loc, dgst), bytes.NewReader(wrong), "application/octet-stream"); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("PUT with a wrong digest = %v, %v; want 400", resp, err)
	}

	for _, via := range []string{a, b} {
		resp, err := do(t, http.MethodHead, "http://"+via+"/v2/team/app/blobs/"+dgst, nil, "")
		if err != nil || resp.StatusCode != http.StatusNotFound {
			t.Errorf("HEAD blob through %s = %v, %v; want 404", via, resp, err)
		}
	}
	if keys := m.Keys(t, bucket, prefix+"docker/registry/v2/blobs/"); len(keys) != 0 {
		t.Errorf("blobs in the bucket after failed uploads: %v", keys)
	}
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",`+
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`, dgst, len(blob))
	resp, err := do(t, http.MethodPut, "http://"+b+"/v2/team/app/manifests/v1", strings.NewReader(manifest), "application/vnd.oci.image.manifest.v1+json")
	if err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("PUT of a manifest naming the unfinished blob = %v, %v; want 400", resp, err)
	}

	// The same blob then pushes and reads back whole.
	loc = startUpload(t, b, "team/app")
	if resp, err := do(t, http.MethodPut, withDigest(loc, dgst), bytes.NewReader(blob), "application/octet-stream"); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT = %v, %v; want 201", resp, err)
	}
	got, err := http.Get("http://" + a + "/v2/team/app/blobs/" + dgst)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Body.Close()
	body, err := io.ReadAll(got.Body)
	if err != nil || !bytes.Equal(body, blob) {
		t.Errorf("GET blob through A: %d bytes, %v; want the %d pushed", len(body), err, len(blob))
	}
}

// startUpload opens an upload session and returns its absolute location.
func startUpload(t *testing.T, addr, repo string) string {
	t.Helper()
	resp, err := do(t, http.MethodPost, "http://"+addr+"/v2/"+repo+"/blobs/uploads/", nil, "")
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload = %v, %v", resp, err)
	}
	loc := resp.Header.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = "http://" + addr + loc
	}
	return loc
}

func withDigest(loc, dgst string) string {
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	return loc + sep + "digest=" + dgst
}

func do(t *testing.T, method, url string, body io.Reader, contentType string) (*http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// failingReader yields data, then fails as a client that dies mid-upload.
type failingReader struct{ data []byte }

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, errors.New("client died")
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// Behind a load balancer without session affinity, an upload begun on one
// server goes on on another when they share the upload secret, and is
// refused, never half-committed, when they do not.
func TestS3UploadAcrossServers(t *testing.T) {
	s3 := s3Store(t)
	secret := strings.Repeat("0123456789abcdef", 4)
	a := start(t, cacheserver.Config{S3: s3, UploadSecret: secret})
	b := start(t, cacheserver.Config{S3: s3, UploadSecret: secret})
	c := start(t, cacheserver.Config{S3: s3}) // a secret of its own

	blob := []byte("a layer pushed through two servers")
	sum := sha256.Sum256(blob)
	dgst := "sha256:" + hex.EncodeToString(sum[:])
	loc := startUpload(t, a, "team/app")
	onC := strings.Replace(loc, a, c, 1)
	if resp, err := do(t, http.MethodPut, withDigest(onC, dgst), bytes.NewReader(blob), "application/octet-stream"); err != nil || resp.StatusCode < 400 {
		t.Fatalf("PUT through a server with another secret = %v, %v; want a refusal", resp, err)
	}
	onB := strings.Replace(loc, a, b, 1)
	if resp, err := do(t, http.MethodPut, withDigest(onB, dgst), bytes.NewReader(blob), "application/octet-stream"); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT through B of an upload begun on A = %v, %v; want 201", resp, err)
	}
	for _, via := range []string{a, b, c} {
		if resp, err := do(t, http.MethodHead, "http://"+via+"/v2/team/app/blobs/"+dgst, nil, ""); err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("HEAD through %s = %v, %v; want 200", via, resp, err)
		}
	}
	if _, err := cacheserver.New(t.Context(), cacheserver.Config{S3: s3, Addr: "127.0.0.1:0", UploadSecret: "short"}); err == nil {
		t.Error("a short upload secret was accepted")
	}
}

// A base image one server mirrored into the bucket is served by another
// server on that bucket with the upstream stopped.
func TestS3UpstreamMirror(t *testing.T) {
	m := testenv.MinIO(t)
	s3, bucket, prefix := s3StoreOn(t, m)
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
	a := start(t, cacheserver.Config{S3: s3, Upstreams: []cacheserver.Upstream{up}})
	b := start(t, cacheserver.Config{S3: s3, Upstreams: []cacheserver.Upstream{up}})
	refA, _ := name.ParseReference(a + "/hub/library/base:1")
	got, err := remote.Image(refA)
	if err != nil {
		t.Fatalf("pull through A's mirror: %v", err)
	}
	if err := validate.Image(got); err != nil {
		t.Fatalf("pull through A's mirror: %v", err)
	}
	// The mirror commits a blob after the client has read it: wait for
	// the manifest, the config and both layers to be in the bucket.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		keys := m.Keys(t, bucket, prefix+"mirrors/hub/docker/registry/v2/blobs/")
		if len(keys) >= 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the mirrored image is not in the bucket under %smirrors/hub/: %v", prefix, keys)
		}
	}

	upstream.Close()
	refB, _ := name.ParseReference(b + "/hub/library/base:1")
	again, err := remote.Image(refB)
	if err != nil {
		t.Fatalf("pull through B's mirror with the upstream stopped: %v", err)
	}
	if err := validate.Image(again); err != nil {
		t.Fatalf("pull through B's mirror with the upstream stopped: %v", err)
	}
	want, _ := img.Digest()
	if d, _ := again.Digest(); d != want {
		t.Errorf("B's mirror served %s, upstream had %s", d, want)
	}
}
