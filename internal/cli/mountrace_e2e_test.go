package cli_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// Two stages of one build restoring the same cache mount on a fresh runner
// race to put it in place: the one that loses must use the winner's
// directory. Before, it failed with "rename ...: directory not empty".
func TestCacheMountRestoredByTwoStages(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	cacheDir := filepath.Join(t.TempDir(), "cache")
	seed := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN --mount=type=cache,id=shared,target=/c head -c 8000000 /dev/urandom > /c/big && echo v1 > /c/tag\n",
	})
	_, env := freshRunner(t, seed, time.Unix(1700000000, 0))
	kiln(t, seed, env, "build", "--progress=plain", "--cache-to", "type=local,dest="+cacheDir, ".")

	df := "FROM " + base + " AS a\nRUN --mount=type=cache,id=shared,target=/c cat /c/tag > /a\n" +
		"FROM " + base + " AS b\nRUN --mount=type=cache,id=shared,target=/c cat /c/tag > /b\n" +
		"FROM scratch\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n"
	dir := writeContext(t, map[string]string{"Dockerfile": df})
	// Several fresh runners: the race is the common case, not certain.
	for i := range 3 {
		_, env := freshRunner(t, seed, time.Unix(1700000000, 0))
		out := filepath.Join(t.TempDir(), "out")
		res := testenv.Run(t, dir, env, "build", "--progress=plain", "--parallelism=2",
			"--cache-from", "type=local,src="+cacheDir, "-o", "type=local,dest="+out, ".")
		if res.ExitCode != 0 {
			t.Fatalf("runner %d: exit %d:\n%s", i+1, res.ExitCode, lastBytes(res.Stderr, 2000))
		}
		for _, f := range []string{"a", "b"} {
			if got, _ := os.ReadFile(filepath.Join(out, f)); strings.TrimSpace(string(got)) != "v1" {
				t.Errorf("runner %d: /%s = %q, want the restored mount's v1", i+1, f, got)
			}
		}
	}
}

// A cache mount is exported only while no one writes it: a build that
// exports a mount another build's RUN is still writing waits for that RUN,
// and a fresh runner then restores the finished contents. Before, the
// export archived whatever was there (here "partial").
func TestCacheMountExportWaitsForWriter(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
	writer := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN --mount=type=cache,id=m,target=/c echo partial > /c/f && sleep 6 && echo whole > /c/f\n",
	})
	cmd := exec.Command(testenv.Kiln(t), "build", "--progress=plain", ".")
	cmd.Dir, cmd.Env = writer, append(os.Environ(), env...)
	var werr bytes.Buffer
	cmd.Stderr = &werr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	// Wait until the writer's RUN has written its first version.
	deadline := time.Now().Add(40 * time.Second)
	for {
		m, _ := filepath.Glob(filepath.Join(home, ".cache", "kiln", "mounts", "*", "f"))
		if len(m) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the writer's RUN never wrote its mount:\n%s", werr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	cacheDir := filepath.Join(t.TempDir(), "cache")
	user := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN --mount=type=cache,id=m,target=/c ls /c > /list\n",
	})
	kiln(t, user, env, "build", "--progress=plain", "--cache-to", "type=local,dest="+cacheDir, ".")
	if err := <-done; err != nil {
		t.Fatalf("writer: %v\n%s", err, werr.String())
	}
	done <- nil // for the cleanup

	reader := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN --mount=type=cache,id=m,target=/c cat /c/f > /f\n",
	})
	_, fresh := freshRunner(t, reader, time.Unix(1700000000, 0))
	out := filepath.Join(t.TempDir(), "out")
	kiln(t, reader, fresh, "build", "--progress=plain", "--cache-from", "type=local,src="+cacheDir, "-o", "type=local,dest="+out, ".")
	if got := readFile(t, filepath.Join(out, "f")); strings.TrimSpace(got) != "whole" {
		t.Errorf("restored mount holds %q, want the writer's finished %q", strings.TrimSpace(got), "whole")
	}
}
