package cacheserver_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kiln-build/kiln/internal/cacheserver"
	"github.com/kiln-build/kiln/internal/testenv"
)

// bucket is a store under a prefix of a real MinIO bucket, looked at from
// outside the servers: listing keys is no use of anything.
type bucket struct {
	m            *testenv.MinIOServer
	name, prefix string
	s3           *cacheserver.S3
}

func newBucket(t *testing.T) *bucket {
	t.Helper()
	m := testenv.MinIO(t)
	s3, name, prefix := s3StoreOn(t, m)
	return &bucket{m: m, name: name, prefix: prefix, s3: s3}
}

// blobBytes is what the blobs in the bucket take.
func (b *bucket) blobBytes(t *testing.T) int64 {
	t.Helper()
	var n int64
	for _, o := range b.m.Objects(t, b.name, b.prefix+"docker/registry/v2/blobs/") {
		if strings.HasSuffix(o.Key, "/data") {
			n += o.Size
		}
	}
	return n
}

// hasBlob says whether the bucket holds blob d.
func (b *bucket) hasBlob(t *testing.T, d v1.Hash) bool {
	t.Helper()
	return len(b.m.Keys(t, b.name, b.prefix+"docker/registry/v2/blobs/sha256/"+d.Hex[:2]+"/"+d.Hex+"/data")) > 0
}

// manifests is every manifest in the bucket, as "repo@sha256:hex".
func (b *bucket) manifests(t *testing.T) []string {
	t.Helper()
	root := b.prefix + "docker/registry/v2/repositories/"
	var out []string
	for _, k := range b.m.Keys(t, b.name, root) {
		repo, rest, ok := strings.Cut(strings.TrimPrefix(k, root), "/_manifests/revisions/sha256/")
		if hex, ok2 := strings.CutSuffix(rest, "/link"); ok && ok2 {
			out = append(out, repo+"@sha256:"+hex)
		}
	}
	return out
}

// hasManifest says whether the bucket holds manifest d in repo.
func (b *bucket) hasManifest(t *testing.T, repo string, d v1.Hash) bool {
	t.Helper()
	return slices.Contains(b.manifests(t), repo+"@"+d.String())
}

// pullsWhole fails the test unless every manifest in the bucket pulls
// through addr with every blob it names, each matching its digest.
func (b *bucket) pullsWhole(t *testing.T, addr, when string) int {
	t.Helper()
	ms := b.manifests(t)
	for _, m := range ms {
		ref, err := name.NewDigest(addr + "/" + m)
		if err != nil {
			t.Fatal(err)
		}
		desc, err := remote.Get(ref)
		if err != nil {
			t.Errorf("%s: manifest %s in the bucket does not pull through %s: %v", when, m, addr, err)
			continue
		}
		if desc.MediaType.IsIndex() {
			idx, err := desc.ImageIndex()
			if err == nil {
				err = validate.Index(idx)
			}
			if err != nil {
				t.Errorf("%s: index %s does not pull whole through %s: %v", when, m, addr, err)
			}
			continue
		}
		img, err := desc.Image()
		if err == nil {
			err = validate.Image(img)
		}
		if err != nil {
			t.Errorf("%s: image %s does not pull whole through %s: %v", when, m, addr, err)
		}
	}
	return len(ms)
}

// Two servers bound one bucket together: pushes through both beyond the
// cap bring the store back under it, every remaining manifest pulls whole
// through both, and an image read through B the whole time is kept though
// A, which pushed it first and never read it, sweeps too: the servers
// share what they saw used. The image read only once, long ago, through A
// goes; evictions count in /metrics.
func TestS3MaxSizeTwoServers(t *testing.T) {
	b := newBucket(t)
	const maxSize = 2 << 20
	cfg := cacheserver.Config{S3: b.s3, MaxSize: maxSize, EvictGrace: 4 * time.Second, EvictInterval: 200 * time.Millisecond}
	a := start(t, cfg)
	bb := start(t, cfg)
	before := metricValue(scrapeMetrics(t, a), `kiln_cache_server_evictions_total{kind="manifest"}`)

	const n = 8
	via := []string{a, bb}
	digests := make([]v1.Hash, n)
	for i := range n {
		img, err := random.Image(300_000, 2) // about 600 kB each
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.ParseReference(fmt.Sprintf("%s/evict/app:%d", via[i%2], i))
		if err := remote.Write(ref, img); err != nil {
			t.Fatalf("push %d through %s: %v", i, via[i%2], err)
		}
		digests[i], _ = img.Digest()
		if i == 1 {
			ref1, _ := name.ParseReference(a + "/evict/app:1")
			pullWhole(t, ref1, "image 1 through A, once")
		}
		ref0, _ := name.ParseReference(bb + "/evict/app:0")
		pullWhole(t, ref0, fmt.Sprintf("image 0 through B after push %d", i))
	}
	ref0, _ := name.ParseReference(bb + "/evict/app:0")
	deadline := time.Now().Add(cfg.EvictGrace + 30*time.Second)
	for b.blobBytes(t) > maxSize {
		if time.Now().After(deadline) {
			t.Fatalf("bucket still holds %d bytes of blobs, cap %d", b.blobBytes(t), maxSize)
		}
		pullWhole(t, ref0, "image 0 through B during eviction")
		time.Sleep(100 * time.Millisecond)
	}
	if !b.hasManifest(t, "evict/app", digests[0]) {
		t.Errorf("the image read through B all along was evicted")
	}
	if b.hasManifest(t, "evict/app", digests[1]) {
		t.Errorf("the image read once, long ago, through A survived a store over its cap")
	}
	kept := b.pullsWhole(t, a, "under the cap, through A")
	b.pullsWhole(t, bb, "under the cap, through B")
	if kept < 2 || kept == n {
		t.Errorf("%d of %d manifests kept under a %d-byte cap", kept, n, maxSize)
	}
	if got := metricValue(scrapeMetrics(t, a), `kiln_cache_server_evictions_total{kind="manifest"}`) - before; got < float64(n-kept) {
		t.Errorf("/metrics counts %v manifest evictions, %d manifests were evicted", got, n-kept)
	}
	t.Logf("%d of %d images kept, %d bytes of blobs", kept, n, b.blobBytes(t))
}

// Under --max-age on two servers, an image unused for that long goes and
// one read through the other server meanwhile stays.
func TestS3MaxAgeTwoServers(t *testing.T) {
	b := newBucket(t)
	cfg := cacheserver.Config{S3: b.s3, MaxAge: 3 * time.Second, EvictGrace: 2 * time.Second, EvictInterval: 200 * time.Millisecond}
	a := start(t, cfg)
	bb := start(t, cfg)
	var old, used v1.Hash
	for _, p := range []struct {
		tag string
		d   *v1.Hash
	}{{"old", &old}, {"used", &used}} {
		img, _ := random.Image(10_000, 1)
		ref, _ := name.ParseReference(a + "/age/app:" + p.tag)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		*p.d, _ = img.Digest()
	}
	usedB, _ := name.ParseReference(bb + "/age/app:used")
	for deadline := time.Now().Add(30 * time.Second); b.hasManifest(t, "age/app", old); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("an image unused for 30s survived --max-age 3s")
		}
		pullWhole(t, usedB, "an image read through B every 100ms")
	}
	if !b.hasManifest(t, "age/app", used) {
		t.Fatal("an image read through B every 100ms was evicted by --max-age 3s")
	}
	usedA, _ := name.ParseReference(a + "/age/app:used")
	pullWhole(t, usedA, "the image kept, through A")
}

// A blob one server is streaming to a slow client stays in the bucket
// while the other server's sweeps evict its image, and the client gets
// every byte; once the read is over, the blob goes. An upload in progress
// through one server while the sweeps run commits, and its image pulls
// whole through the other.
func TestS3EvictionSparesReadsAndUploads(t *testing.T) {
	b := newBucket(t)
	// The slow image goes in through a server without bounds before the
	// bounded ones start: pushing 24 MiB under the race detector can take
	// longer than the 2s grace from its first blob to its manifest, and a
	// sweep then rightly removes that blob as an orphan.
	big, err := random.Image(24<<20, 1)
	if err != nil {
		t.Fatal(err)
	}
	bigRef, _ := name.ParseReference(start(t, cacheserver.Config{S3: b.s3}) + "/slow/big:1")
	if err := remote.Write(bigRef, big); err != nil {
		t.Fatal(err)
	}
	cfg := cacheserver.Config{S3: b.s3, MaxSize: 1 << 20, EvictGrace: 2 * time.Second, EvictInterval: 200 * time.Millisecond}
	bb := start(t, cfg)
	bigDigest, _ := big.Digest()
	layers, _ := big.Layers()
	layer, _ := layers[0].Digest()

	// A client with a small receive buffer, so the server's send stays
	// in flight as long as the client reads slowly.
	client := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 32<<10) })
		},
	}).DialContext}}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+bb+"/v2/slow/big/blobs/"+layer.String(), nil)
	resp, err := client.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET layer through B = %v, %v", resp, err)
	}
	defer resp.Body.Close()

	// An upload begun through B, its bytes sent, not yet committed.
	blob := make([]byte, 6<<20)
	rand.Read(blob)
	sum := sha256.Sum256(blob)
	blobDigest := "sha256:" + hex.EncodeToString(sum[:])
	loc := startUpload(t, bb, "slow/upload")
	r, err := do(t, http.MethodPatch, loc, bytes.NewReader(blob), "application/octet-stream")
	if err != nil || r.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH = %v, %v", r, err)
	}
	if loc = r.Header.Get("Location"); strings.HasPrefix(loc, "/") {
		loc = "http://" + bb + loc
	}

	a := start(t, cfg)
	// Filler pushed through A puts the store over its cap, and the slow
	// image, unused since its push, is the least recently used.
	for i := range 3 {
		img, _ := random.Image(200_000, 2)
		ref, _ := name.ParseReference(fmt.Sprintf("%s/slow/filler:%d", a, i))
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}

	h := sha256.New()
	buf := make([]byte, 128<<10)
	read, checks, evictedDuring := 0, 0, false
	for {
		n, err := resp.Body.Read(buf)
		h.Write(buf[:n])
		read += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("slow read through B cut off after %d bytes: %v", read, err)
		}
		if checks++; checks%10 == 0 {
			if !b.hasBlob(t, layer) {
				t.Fatalf("the layer a client is reading through B was removed from the bucket after %d of its bytes", read)
			}
			if !evictedDuring && !b.hasManifest(t, "slow/big", bigDigest) {
				evictedDuring = true
				t.Logf("image evicted after %d bytes read", read)
			}
		}
		// Slow enough that the read outlasts the grace several times.
		if !evictedDuring {
			time.Sleep(50 * time.Millisecond)
		} else {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != layer.String() {
		t.Fatalf("the slow read got %d bytes with digest %s, want %s", read, got, layer)
	}
	if !evictedDuring {
		t.Errorf("the slow image was never evicted while its layer was read: the test did not test")
	}

	// The upload commits and its image, pushed through A, pulls whole
	// through B.
	if r, err := do(t, http.MethodPut, withDigest(loc, blobDigest), nil, "application/octet-stream"); err != nil || r.StatusCode != http.StatusCreated {
		t.Fatalf("commit of an upload begun before the sweeps = %v, %v", r, err)
	}
	cfgBlob := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgSum := sha256.Sum256(cfgBlob)
	cfgDigest := "sha256:" + hex.EncodeToString(cfgSum[:])
	cloc := startUpload(t, a, "slow/upload")
	if r, err := do(t, http.MethodPut, withDigest(cloc, cfgDigest), bytes.NewReader(cfgBlob), "application/octet-stream"); err != nil || r.StatusCode != http.StatusCreated {
		t.Fatalf("PUT config = %v, %v", r, err)
	}
	manifest := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":%q,"digest":%q,"size":%d},`+
		`"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
		types.OCIManifestSchema1, types.OCIConfigJSON, cfgDigest, len(cfgBlob), types.OCILayer, blobDigest, len(blob))
	if r, err := do(t, http.MethodPut, "http://"+a+"/v2/slow/upload/manifests/1", strings.NewReader(manifest), string(types.OCIManifestSchema1)); err != nil || r.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest naming the upload = %v, %v", r, err)
	}
	got, err := http.Get("http://" + bb + "/v2/slow/upload/blobs/" + blobDigest)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(got.Body)
	got.Body.Close()
	if !bytes.Equal(body, blob) {
		t.Errorf("the uploaded blob through B: %d bytes, want the %d uploaded", len(body), len(blob))
	}

	// Its read over, the slow layer goes with its image.
	for deadline := time.Now().Add(30 * time.Second); b.hasBlob(t, layer); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the layer of an evicted image stayed 30s after its read ended")
		}
	}
}
