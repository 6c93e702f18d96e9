package cli_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/mountstore"
	"github.com/kiln-build/kiln/internal/testenv"
)

// A build stage whose files reach the image only through COPY --from, and a
// cache mount: both travel only in the cache.
const zstdDockerfile = `FROM BASE AS build
COPY src.txt /src.txt
RUN --mount=type=cache,id=zc,target=/cache mkdir -p /out && (cat /cache/seen 2>/dev/null || echo none) > /out/prev.txt && cp /src.txt /cache/seen && cat /src.txt /src.txt > /out/out.txt
FROM BASE
COPY final.txt /final.txt
COPY --from=build /out/ /app/
RUN cat /app/out.txt /final.txt > /app/both.txt
`

// cacheBlob is what a registry cache's index says of a record's blob.
type cacheBlob struct {
	MediaType types.MediaType `json:"mediaType"`
	Digest    string          `json:"digest"`
	Size      int64           `json:"size"`
}

// cacheBlobs reads a registry cache's index: each record's step id (or
// "cache-mount|ID") with its blob, checked against the media type the
// cache manifest lists for the same blob.
func cacheBlobs(t testing.TB, ref string) map[string]cacheBlob {
	t.Helper()
	img := testenv.Pull(t, ref)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]types.MediaType{}
	for _, l := range m.Layers {
		listed[l.Digest.String()] = l.MediaType
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Records []struct {
			StepID string     `json:"stepID"`
			Layer  *cacheBlob `json:"layer"`
		} `json:"records"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatalf("cache index of %s: %v", ref, err)
	}
	out := map[string]cacheBlob{}
	for _, r := range idx.Records {
		if r.Layer == nil {
			continue
		}
		if got := listed[r.Layer.Digest]; got != r.Layer.MediaType {
			t.Errorf("%s: record %s names %s as %s, the cache manifest lists it as %q", ref, r.StepID, r.Layer.Digest, r.Layer.MediaType, got)
		}
		out[r.StepID] = *r.Layer
	}
	return out
}

// cacheRecords is each record's media type in a registry cache.
func cacheRecords(t testing.TB, ref string) map[string]types.MediaType {
	t.Helper()
	out := map[string]types.MediaType{}
	for id, b := range cacheBlobs(t, ref) {
		out[id] = b.MediaType
	}
	return out
}

func isGzip(mt types.MediaType) bool { return mt == types.OCILayer || mt == types.DockerLayer }

// checkRecords asserts the media type of every record: those of the build
// stage and the cache mount as cacheOnly says, the final stage's gzip. A
// cache mount is exported only by a build whose step using it ran.
func checkRecords(t *testing.T, ref string, cacheOnly func(types.MediaType) bool, what string, wantMounts int) {
	t.Helper()
	recs := cacheRecords(t, ref)
	var build, final, mounts int
	for id, mt := range recs {
		switch {
		case strings.Contains(id, "|build|"):
			build++
			if !cacheOnly(mt) {
				t.Errorf("%s: build-stage layer %s is %s, want %s", ref, id, mt, what)
			}
		case strings.HasPrefix(id, "cache-mount|"):
			// Cache mounts are kiln's own format whatever compression=
			// says (internal/mountstore): a zstd manifest and packs.
			mounts++
			if mt != mountstore.ManifestMediaType {
				t.Errorf("%s: cache mount %s is %s, want %s", ref, id, mt, mountstore.ManifestMediaType)
			}
		case strings.HasPrefix(id, "cache-mount-pack|"):
			if mt != mountstore.PackMediaType {
				t.Errorf("%s: cache mount pack %s is %s, want %s", ref, id, mt, mountstore.PackMediaType)
			}
		default:
			final++
			if !isGzip(mt) {
				t.Errorf("%s: image layer %s is %s, want gzip", ref, id, mt)
			}
		}
	}
	if build != 2 || final != 3 || mounts != wantMounts {
		t.Errorf("%s holds %d build-stage, %d final-stage and %d mount records, want 2, 3, %d: %v", ref, build, final, mounts, wantMounts, recs)
	}
}

func checkGzipImage(t *testing.T, img v1.Image) {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range m.Layers {
		if !isGzip(l.MediaType) {
			t.Errorf("image layer %d is %s, want gzip", i, l.MediaType)
		}
	}
}

// Cache-only blobs are zstd by default, image layers stay gzip; a fresh
// runner hits every step and pushes the same image; misses that need the
// zstd layers and the zstd mount archive read them.
func TestCacheOnlyBlobsAreZstd(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	src := writeContext(t, map[string]string{
		"Dockerfile": strings.ReplaceAll(zstdDockerfile, "BASE", base),
		"src.txt":    strings.Repeat("source line\n", 5000),
		"final.txt":  "final one\n",
	})
	cacheRef := reg + "/zc/app:cache"

	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/zc/app:1",
		"--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")
	checkRecords(t, cacheRef, func(mt types.MediaType) bool { return mt == types.OCILayerZStd }, "zstd", 1)
	first := testenv.Pull(t, reg+"/zc/app:1")
	checkGzipImage(t, first)
	firstDigest, _ := first.Digest()

	// A fresh runner: every step hits, nothing is re-encoded, same image.
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	report := filepath.Join(t.TempDir(), "report.json")
	res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/zc/app:2",
		"--cache-from", "type=registry,ref="+cacheRef, "--report", report, ".")
	r := readReport(t, report)
	if r.Totals.Steps != 5 || r.Totals.Cached != 5 {
		t.Errorf("%d of %d steps cached, want all 5:\n%s", r.Totals.Cached, r.Totals.Steps, res.Stderr)
	}
	if strings.Contains(res.Stderr, "recompress") {
		t.Errorf("a fully cached build re-encoded a layer:\n%s", res.Stderr)
	}
	if d, _ := testenv.Pull(t, reg+"/zc/app:2").Digest(); d != firstDigest {
		t.Errorf("the fresh runner pushed %s, the first runner %s", d, firstDigest)
	}

	// A change in the final stage before COPY --from: the copy misses and
	// reads the build stage's zstd layers on a runner that has none.
	dir, env = freshRunner(t, src, time.Unix(1720000000, 0))
	if err := os.WriteFile(filepath.Join(dir, "final.txt"), []byte("final two\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/zc/app:3",
		"--cache-from", "type=registry,ref="+cacheRef, ".")
	third := testenv.Pull(t, reg+"/zc/app:3")
	checkGzipImage(t, third)
	tree := testenv.Tree(t, third)
	if got, want := string(tree["app/both.txt"].Content), strings.Repeat("source line\n", 10000)+"final two\n"; got != want {
		t.Errorf("app/both.txt has %d bytes, want %d", len(got), len(want))
	}

	// A change in the build stage: its RUN misses and restores the zstd
	// archive of the cache mount the first runner left.
	dir, env = freshRunner(t, src, time.Unix(1730000000, 0))
	if err := os.WriteFile(filepath.Join(dir, "src.txt"), []byte("changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", reg+"/zc/app:4",
		"--cache-from", "type=registry,ref="+cacheRef, ".")
	if !strings.Contains(res.Stderr, "restored cache mount zc") {
		t.Errorf("no cache mount restored:\n%s", res.Stderr)
	}
	tree = testenv.Tree(t, testenv.Pull(t, reg+"/zc/app:4"))
	if got, want := string(tree["app/prev.txt"].Content), strings.Repeat("source line\n", 5000); got != want {
		t.Errorf("the restored cache mount held %d bytes of the first runner's src.txt, want %d", len(got), len(want))
	}
}

// --cache-to compression=gzip keeps every blob gzip (BuildKit's default);
// force-compression=true re-encodes what earlier builds cached as zstd.
func TestCacheToCompressionGzip(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	src := writeContext(t, map[string]string{
		"Dockerfile": strings.ReplaceAll(zstdDockerfile, "BASE", base),
		"src.txt":    "source\n",
		"final.txt":  "final\n",
	})
	gzRef, zRef, forcedRef := reg+"/zg/app:gzip", reg+"/zg/app:zstd", reg+"/zg/app:forced"

	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--cache-to", "type=registry,ref="+gzRef+",mode=max,compression=gzip", ".")
	checkRecords(t, gzRef, isGzip, "gzip (compression=gzip)", 1)

	dir, env = freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--cache-to", "type=registry,ref="+zRef+",mode=max", ".")
	checkRecords(t, zRef, func(mt types.MediaType) bool { return mt == types.OCILayerZStd }, "zstd", 1)

	// Without force-compression the zstd blobs a cache hit names stay zstd
	// (compression= is for layers newly made, as in BuildKit); with it,
	// every blob exported is gzip.
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--cache-from", "type=registry,ref="+zRef,
		"--cache-to", "type=registry,ref="+forcedRef+",mode=max,compression=gzip,force-compression=true", ".")
	checkRecords(t, forcedRef, isGzip, "gzip (force-compression=true)", 0)
	verifyCacheBlobs(t, forcedRef)
}

// A zstd layer one build cached for a build stage is later wanted in an
// image (here --target build; a Dockerfile whose final stage is built FROM
// the build stage is the same case): the image still gets gzip layers,
// re-encoded once and counted, byte for byte what a gzip build makes, and
// the re-encoded layer replaces the zstd one in the cache the build
// exports, so the next build re-encodes nothing.
func TestCacheOnlyLayerReusedInImage(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	src := writeContext(t, map[string]string{
		"Dockerfile": strings.ReplaceAll(zstdDockerfile, "BASE", base),
		"src.txt":    strings.Repeat("reused\n", 3000),
		"final.txt":  "final\n",
	})
	cacheRef, cache2 := reg+"/zr/app:cache", reg+"/zr/app:cache2"
	epoch := "SOURCE_DATE_EPOCH=1690000000"

	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, append(env, epoch), "build", "--progress=plain", "--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")

	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	report := filepath.Join(t.TempDir(), "report.json")
	res := kiln(t, dir, append(env, epoch), "build", "--progress=plain", "--target", "build", "--push", "-t", reg+"/zr/app:build",
		"--cache-from", "type=registry,ref="+cacheRef, "--cache-to", "type=registry,ref="+cache2+",mode=max", "--report", report, ".")
	var totals struct {
		Totals struct {
			Steps, Cached      int
			LayersRecompressed int `json:"layersRecompressed"`
		} `json:"totals"`
	}
	if err := json.Unmarshal([]byte(readFile(t, report)), &totals); err != nil {
		t.Fatal(err)
	}
	if tt := totals.Totals; tt.Steps != 2 || tt.Cached != 2 || tt.LayersRecompressed != 2 {
		t.Errorf("--target build: %d of %d steps cached, %d layers recompressed; want 2, 2, 2:\n%s", tt.Cached, tt.Steps, tt.LayersRecompressed, res.Stderr)
	}
	if !strings.Contains(res.Stderr, "2 cached layers recompressed for the image") {
		t.Errorf("the summary does not count the recompressions:\n%s", res.Stderr)
	}
	reused := testenv.Pull(t, reg+"/zr/app:build")
	checkGzipImage(t, reused)
	tree := testenv.Tree(t, reused)
	if got, want := string(tree["out/out.txt"].Content), strings.Repeat("reused\n", 6000); got != want {
		t.Errorf("out/out.txt has %d bytes, want %d", len(got), len(want))
	}
	reusedDigest, _ := reused.Digest()

	// The exported cache now names the gzip blobs for the build stage.
	for id, mt := range cacheRecords(t, cache2) {
		if strings.Contains(id, "|build|") && !isGzip(mt) {
			t.Errorf("%s: build-stage layer %s is %s after it was re-encoded for an image", cache2, id, mt)
		}
	}
	dir, env = freshRunner(t, src, time.Unix(1720000000, 0))
	res = kiln(t, dir, append(env, epoch), "build", "--progress=plain", "--target", "build", "--push", "-t", reg+"/zr/app:build2",
		"--cache-from", "type=registry,ref="+cache2, ".")
	if strings.Contains(res.Stderr, "recompress") {
		t.Errorf("a build from the re-encoded cache re-encoded again:\n%s", res.Stderr)
	}
	if d, _ := testenv.Pull(t, reg+"/zr/app:build2").Digest(); d != reusedDigest {
		t.Errorf("from the re-encoded cache: %s, want %s", d, reusedDigest)
	}

	// A Dockerfile change that makes the build stage the final stage's
	// base: its cached zstd layers are now the image's, and are gzip there.
	dir, env = freshRunner(t, src, time.Unix(1715000000, 0))
	based := strings.ReplaceAll(zstdDockerfile, "BASE", base)
	based = based[:strings.LastIndex(based, "FROM ")] + "FROM build\nCOPY final.txt /final.txt\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(based), 0o644); err != nil {
		t.Fatal(err)
	}
	res = kiln(t, dir, append(env, epoch), "build", "--progress=plain", "--push", "-t", reg+"/zr/app:based",
		"--cache-from", "type=registry,ref="+cacheRef, ".")
	if !strings.Contains(res.Stderr, "2 cached layers recompressed for the image") {
		t.Errorf("FROM build: the build stage's cached layers were not re-encoded once each:\n%s", res.Stderr)
	}
	basedImg := testenv.Pull(t, reg+"/zr/app:based")
	checkGzipImage(t, basedImg)
	if got := string(testenv.Tree(t, basedImg)["final.txt"].Content); got != "final\n" {
		t.Errorf("final.txt = %q", got)
	}

	// Byte for byte what a build that never saw the zstd cache pushes.
	dir, env = freshRunner(t, src, time.Unix(1730000000, 0))
	kiln(t, dir, append(env, epoch), "build", "--progress=plain", "--target", "build", "--push", "-t", reg+"/zr/app:cold", ".")
	if d, _ := testenv.Pull(t, reg+"/zr/app:cold").Digest(); d != reusedDigest {
		t.Errorf("a cold --target build pushed %s, the build that re-encoded the zstd layers %s", d, reusedDigest)
	}
}
