package cli_test

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

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
