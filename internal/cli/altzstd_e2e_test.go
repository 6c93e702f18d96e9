package cli_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/registry"
	"github.com/kiln-build/kiln/internal/testenv"
)

// altKey is the cache key kiln stores a base layer's zstd copy under: part
// of the cache's format, so spelled out here rather than imported.
func altKey(diffID v1.Hash) digest.Digest {
	return digest.FromString("kiln alt-encoding v1 zstd " + diffID.String())
}

// A mode=max registry cache keeps zstd copies of the big gzip base layers;
// a fresh runner whose build misses a step above the base extracts the
// copies instead of downloading the base's gzip blobs, and pushes the same
// image a build without copies pushes. A copy that is not the layer it is
// recorded for is caught, warned about, and the original is used.
func TestFreshRunnerZstdBaseCopies(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	var big []v1.Layer
	for range 2 {
		// Random bytes: gzip cannot shrink them under kiln's 4 MiB floor.
		l, err := random.Layer(5<<20, types.DockerLayer)
		if err != nil {
			t.Fatal(err)
		}
		big = append(big, l)
	}
	small, err := random.Layer(64<<10, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := testenv.BusyboxImage(t, reg, "bigbase", testenv.WithLayers(append(big, small)...))
	p := newProxy(t, reg)
	baseArg := "BASE=" + strings.Replace(base, reg, p.host, 1)
	epoch := "SOURCE_DATE_EPOCH=1700000000"
	cacheRef := p.host + "/cache/alt:buildcache"
	src := writeContext(t, map[string]string{
		"Dockerfile": "ARG BASE\nFROM ${BASE}\nCOPY app.txt /app/app.txt\nRUN cat /app/app.txt > /app/copy.txt\n",
		"app.txt":    "version 1\n",
	})
	var gz, diffIDs []v1.Hash
	var gzNames []string
	for _, l := range big {
		d, _ := l.Digest()
		id, _ := l.DiffID()
		gz, diffIDs, gzNames = append(gz, d), append(diffIDs, id), append(gzNames, d.String())
	}
	build := func(tag string, edit string, extra ...string) (img v1.Image, stderr string) {
		t.Helper()
		dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
		if edit != "" {
			if err := os.WriteFile(filepath.Join(dir, "app.txt"), []byte(edit), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		args := append([]string{"build", "--progress=plain", "--push", "-t", p.host + "/alt:" + tag,
			"--build-arg", baseArg, "--build-arg", epoch}, extra...)
		res := kiln(t, dir, env, append(args, ".")...)
		return testenv.Pull(t, reg+"/alt:"+tag), res.Stderr
	}

	// Runner 1, cold: stores a zstd copy of each big base layer, made from
	// the one download its extraction reads (and inflates).
	build("1", "", "--cache-to", "type=registry,ref="+cacheRef+",mode=max")
	var gzBytes int64
	for _, l := range big {
		n, _ := l.Size()
		gzBytes += n
	}
	if n, b := p.downloaded(gzNames); n != 2 || b != gzBytes {
		t.Errorf("the cold build downloaded %d of the 2 big base blobs, %d bytes; want each once, %d bytes", n, b, gzBytes)
	}
	ctx := context.Background()
	st, err := cache.OpenRegistry(ctx, strings.Replace(cacheRef, p.host, reg, 1), registry.Options{Insecure: []string{reg}})
	if err != nil {
		t.Fatal(err)
	}
	var alts []cache.Record
	var altNames []string
	for i, id := range diffIDs {
		rec, err := st.Get(ctx, altKey(id))
		if err != nil {
			t.Fatalf("no zstd copy of base layer %d (%s) in the cache: %v", i, id, err)
		}
		if rec.Layer.DiffID != id || !strings.HasSuffix(string(rec.Layer.MediaType), "zstd") || rec.Layer.Digest == gz[i] {
			t.Fatalf("copy of base layer %d is %+v, want a zstd blob of diffID %s", i, rec.Layer, id)
		}
		alts, altNames = append(alts, rec), append(altNames, rec.Layer.Digest.String())
	}
	// Below the floor: busybox (about 1 MiB) and a 64 KiB layer.
	baseLayers, err := testenv.Pull(t, base).Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []v1.Layer{baseLayers[0], small} {
		id, _ := l.DiffID()
		if rec, err := st.Get(ctx, altKey(id)); err == nil {
			t.Errorf("a base layer under 4 MiB got a zstd copy: %+v", rec.Layer)
		}
	}

	// The reference: the changed build on a runner with no cache at all.
	want, _ := build("ref", "version 2\n")
	wantDigest, _ := want.Digest()

	// Runner 2, fresh: COPY misses, so the base is materialized, from the
	// copies; the image still names the base's gzip layers.
	p.reset()
	got, _ := build("2", "version 2\n", "--cache-from", "type=registry,ref="+cacheRef)
	if d, _ := got.Digest(); d != wantDigest {
		t.Errorf("image built from the zstd copies is %s, without them %s", d, wantDigest)
	}
	if ls := layerDigests(t, got); len(ls) < 3 || ls[1] != gzNames[0] || ls[2] != gzNames[1] {
		t.Errorf("image layers %v do not name the base's gzip layers %v", ls, gzNames)
	}
	if n, b := p.downloaded(gzNames); n != 0 {
		t.Errorf("downloaded %d gzip base blobs (%d bytes), want their zstd copies instead", n, b)
	}
	if n, _ := p.downloaded(altNames); n != 2 {
		t.Errorf("downloaded %d of the 2 zstd copies", n)
	}
	if tree := testenv.Tree(t, got); string(tree["app/copy.txt"].Content) != "version 2\n" {
		t.Errorf("app/copy.txt = %q", tree["app/copy.txt"].Content)
	}

	// A hostile cache: layer 0's copy is recorded as layer 1's zstd blob.
	bad := alts[1]
	bad.Key, bad.Layer.DiffID, bad.StepID = altKey(diffIDs[0]), diffIDs[0], "alt-encoding|zstd|"+diffIDs[0].String()
	l, err := st.Layer(ctx, alts[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, bad, l); err != nil {
		t.Fatal(err)
	}
	if err := st.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p.reset()
	got, stderr := build("3", "version 2\n", "--cache-from", "type=registry,ref="+cacheRef)
	if d, _ := got.Digest(); d != wantDigest {
		t.Errorf("image built past a wrong zstd copy is %s, want %s", d, wantDigest)
	}
	if !strings.Contains(stderr, "zstd copy") || !strings.Contains(stderr, "extracting the original layers") {
		t.Errorf("no warning about the wrong zstd copy:\n%s", stderr)
	}
	if n, _ := p.downloaded(gzNames[:1]); n != 1 {
		t.Errorf("layer 0's gzip blob was not downloaded after its copy failed")
	}
	if tree := testenv.Tree(t, got); string(tree["app/copy.txt"].Content) != "version 2\n" {
		t.Errorf("app/copy.txt = %q", tree["app/copy.txt"].Content)
	}
}
