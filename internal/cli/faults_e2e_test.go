package cli_test

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kiln-build/kiln/internal/testenv"
)

// exists reports whether ref is in the registry.
func exists(t *testing.T, ref string) bool {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	_, err = remote.Head(r)
	return err == nil
}

// A --cache-to that fails fails the build before any output: no image is
// pushed by a build that reports failure. With ignore-error=true the push
// happens.
func TestFailedCacheToPushesNothing(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo built > /x\n"})
	bad := testenv.Run(t, dir, nil, "build", "--progress=plain", "--push", "-t", reg+"/app:failed",
		"--cache-to", "type=registry,ref=127.0.0.1:1/nothing:here", ".")
	if bad.ExitCode == 0 {
		t.Fatalf("a failed --cache-to did not fail the build:\n%s", bad.Stderr)
	}
	if exists(t, reg+"/app:failed") {
		t.Errorf("a build that failed (its --cache-to) still pushed its image")
	}
	kiln(t, dir, nil, "build", "--progress=plain", "--push", "-t", reg+"/app:ignored",
		"--cache-to", "type=registry,ref=127.0.0.1:1/nothing:here,ignore-error=true", ".")
	if !exists(t, reg+"/app:ignored") {
		t.Errorf("with ignore-error=true the image must still be pushed")
	}
}

// faultDockerfile has steps of every kind the cache moves: a RUN making
// random bytes (so a build that reruns it differs), a COPY, and a RUN that
// reads both, with a variant ARG so that builds share some keys.
const faultDockerfile = `FROM %s
ARG VARIANT
RUN head -c 30000 /dev/urandom > /r && echo "$VARIANT" > /variant
COPY f.txt /f
RUN cat /f /variant > /g && wc -c < /r > /rsize
`

// Registry faults never break an image or the cache: through a proxy that
// injects 500s, resets, truncated and bit-flipped bodies and 2 s stalls,
// every build either succeeds with an image whose every blob verifies (read
// back straight from the registry) and whose files are right, or fails
// with a clear error; afterwards a clean build reads the cache and hits.
// KILN_FAULT_SEED picks another sequence of faults.
func TestRegistryFaults(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	seed := testenv.FaultSeed(t)
	p := testenv.NewFaultProxy(t, reg, seed, 0.06)
	viaProxy := strings.Replace(base, reg, p.Host, 1)
	dir := writeContext(t, map[string]string{"Dockerfile": fmt.Sprintf(faultDockerfile, viaProxy), "f.txt": "file\n"})
	cacheRef := p.Host + "/cache/faults:c"

	const builds, parallel = 20, 4
	type outcome struct {
		res testenv.Result
		tag string
	}
	outcomes := make([]outcome, builds)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range builds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			home := t.TempDir() // a fresh runner: the cache is the registry's
			env := []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
			tag := fmt.Sprintf("/app:%d", i)
			outcomes[i] = outcome{tag: tag, res: testenv.Run(t, dir, env, "build", "--progress=plain",
				"--build-arg", fmt.Sprintf("VARIANT=v%d", i%3), "--push", "-t", p.Host+tag,
				"--cache-from", "type=registry,ref="+cacheRef, "--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")}
		}()
	}
	wg.Wait()
	p.SetEnabled(false)

	ok, failed, broken := 0, 0, 0
	for i, o := range outcomes {
		if o.res.ExitCode != 0 {
			if why := unclearFailure(o.res.Stderr); why != "" {
				broken++
				t.Errorf("build %d failed without a clear error (%s):\n%s", i, why, o.res.Stderr)
			} else {
				failed++
			}
			continue
		}
		if err := verifyImage(t, reg+o.tag, fmt.Sprintf("v%d", i%3)); err != nil {
			broken++
			t.Errorf("build %d succeeded with a broken image: %v", i, err)
			continue
		}
		ok++
	}
	t.Logf("seed %d: %d builds: %d ok, %d failed cleanly, %d broken; %s", seed, builds, ok, failed, broken, p)
	if ok == 0 {
		t.Errorf("no build survived the faults; the rate is too high to test anything")
	}

	// The cache is readable: every blob its manifest names verifies, and a
	// clean build straight to the registry reads it and hits.
	verifyCacheBlobs(t, reg+"/cache/faults:c")
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	report := filepath.Join(t.TempDir(), "r.json")
	kiln(t, dir, env, "build", "--progress=plain", "--build-arg", "VARIANT=v0", "--report", report,
		"--cache-from", "type=registry,ref="+reg+"/cache/faults:c", ".")
	if r := readReport(t, report); r.Totals.Cached == 0 {
		t.Errorf("a clean build after the faults hit nothing in the cache: %+v", r.Steps)
	}
}

// unclearFailure says what is wrong with a failed build's output, or "" when
// it ends with kiln's one-line error.
func unclearFailure(stderr string) string {
	switch {
	case strings.Contains(stderr, "panic:") || strings.Contains(stderr, "goroutine "):
		return "a panic"
	case !strings.Contains(stderr, "ERROR: "):
		return "no ERROR line"
	}
	return ""
}

// verifyImage reads the image straight from the registry with a clean
// client and checks every blob (digests, diffIDs, config) and its files.
func verifyImage(t *testing.T, ref, variant string) error {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	img, err := remote.Image(r, remote.WithContext(t.Context()))
	if err != nil {
		return err
	}
	if err := validate.Image(img); err != nil {
		return err
	}
	tree := testenv.Tree(t, img)
	if got, want := string(tree["g"].Content), "file\n"+variant+"\n"; got != want {
		return fmt.Errorf("/g = %q, want %q", got, want)
	}
	if got := strings.TrimSpace(string(tree["rsize"].Content)); got != "30000" || len(tree["r"].Content) != 30000 {
		return fmt.Errorf("/r has %d bytes, /rsize says %q", len(tree["r"].Content), got)
	}
	return nil
}

// verifyCacheBlobs reads every blob a registry cache manifest names.
func verifyCacheBlobs(t *testing.T, ref string) {
	t.Helper()
	img := testenv.Pull(t, ref)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(ref, name.Insecure)
	for _, l := range m.Layers {
		blob, err := remote.Layer(r.Context().Digest(l.Digest.String()), remote.WithContext(t.Context()))
		if err != nil {
			t.Errorf("cache blob %s: %v", l.Digest, err)
			continue
		}
		rc, err := blob.Compressed()
		if err != nil {
			t.Errorf("cache blob %s: %v", l.Digest, err)
			continue
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Errorf("cache blob %s does not verify: %v", l.Digest, err)
		}
		rc.Close()
	}
	if len(m.Layers) == 0 {
		t.Errorf("the cache at %s names no blobs", ref)
	}
}
