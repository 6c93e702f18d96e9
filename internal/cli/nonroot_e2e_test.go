package cli_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/testenv"
)

// Only RUN needs root (README): a build without RUN, run by an unprivileged
// user, succeeds with either snapshotter and gives the very image a root
// build gives, owners included (--chown, a base image's files, a stage's
// files). Before, it failed at the first COPY ("mount ... operation not
// permitted", then "lchown ... operation not permitted").
func TestBuildWithoutRunAsUnprivilegedUser(t *testing.T) {
	setpriv := testenv.Need(t, "setpriv")
	if os.Geteuid() != 0 {
		t.Fatal("this test runs kiln as nobody, so it must start as root")
	}
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	// Everything nobody touches lives in a directory it may enter.
	top, err := os.MkdirTemp("", "kiln-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	if err := os.Chmod(top, 0o777); err != nil {
		t.Fatal(err)
	}
	df := "FROM " + base + " AS files\nCOPY --chown=7:8 a.txt /owned/a.txt\nWORKDIR /w\n" +
		"FROM " + base + "\nCOPY a.txt sub /x/\nCOPY --from=files /owned /from-stage/\nCOPY --chown=1000:1000 sub /home/app/\n"
	ctxDir := filepath.Join(top, "ctx")
	testenv.WriteFiles(t, ctxDir, map[string]string{"Dockerfile": df, "a.txt": "A", "sub/b.txt": "B", "sub/link": "symlink:b.txt"})
	if err := exec.Command("chmod", "-R", "a+rwX", top).Run(); err != nil {
		t.Fatal(err)
	}
	digest := func(dest string) string {
		idx, err := layout.ImageIndexFromPath(dest)
		if err != nil {
			t.Fatal(err)
		}
		im, err := idx.IndexManifest()
		if err != nil || len(im.Manifests) != 1 {
			t.Fatalf("%s: %v", dest, err)
		}
		return im.Manifests[0].Digest.String()
	}
	epoch := "SOURCE_DATE_EPOCH=1700000000"
	rootOut := filepath.Join(t.TempDir(), "root")
	kiln(t, ctxDir, []string{epoch}, "build", "--progress=plain", "-o", "type=oci,tar=false,dest="+rootOut, ".")
	want := digest(rootOut)

	for _, snap := range []string{"copy", "auto"} {
		home := filepath.Join(top, "home-"+snap)
		if err := os.Mkdir(home, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(home, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(home, "out")
		args := []string{"--reuid=65534", "--regid=65534", "--clear-groups", "env", epoch, "HOME=" + home,
			"XDG_CACHE_HOME=" + filepath.Join(home, ".cache"), "TMPDIR=" + home, "DOCKER_CONFIG=" + filepath.Join(home, ".docker"),
			testenv.Kiln(t), "build", "--progress=plain", "--snapshotter=" + snap, "-o", "type=oci,tar=false,dest=" + out,
			"-o", "type=local,dest=" + filepath.Join(home, "rootfs"), "."}
		cmd := exec.CommandContext(t.Context(), setpriv, args...)
		cmd.Dir = ctxDir
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("--snapshotter=%s as nobody: %v\n%s", snap, err, b)
		}
		if got := digest(out); got != want {
			t.Errorf("--snapshotter=%s as nobody: image %s, want the root build's %s\n%s", snap, got, want, b)
		}
		// The owners kiln recorded stay inside kiln: exported files just
		// belong to the user.
		for _, f := range []string{"x/a.txt", "home/app/b.txt", "from-stage/a.txt", "home/app"} {
			buf := make([]byte, 256)
			n, err := unix.Listxattr(filepath.Join(home, "rootfs", f), buf)
			if err != nil || n != 0 {
				t.Errorf("--snapshotter=%s: exported %s has extended attributes %q (%v), want none", snap, f, buf[:max(n, 0)], err)
			}
		}
		if strings.Contains(string(b), "WARNING") {
			t.Logf("--snapshotter=%s as nobody:\n%s", snap, b)
		}
	}
}
