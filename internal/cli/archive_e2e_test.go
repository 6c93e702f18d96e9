package cli_test

import (
	"archive/tar"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testenv"
)

// Steps that change nothing give identical layers, so one layer appears
// several times in a stage: overlayfs refused a lowerdir list naming a
// directory twice ("too many levels of symbolic links").
func TestRepeatedLayers(t *testing.T) {
	testenv.Need(t, "runc")
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	df := "FROM " + base + "\n" +
		"RUN true\nRUN true\nRUN true\n" +
		// Non-adjacent: an empty layer again after one that wrote.
		"RUN echo one > /one\nRUN true\n" +
		// Two RUNs that only write into a cache mount: empty layers too.
		"RUN --mount=type=cache,target=/cache echo a >> /cache/log\n" +
		"RUN --mount=type=cache,target=/cache echo b >> /cache/log\n" +
		"RUN cat /one > /two\n"
	for _, isolation := range []string{"chroot", "runc"} {
		t.Run(isolation, func(t *testing.T) {
			dir := writeContext(t, map[string]string{"Dockerfile": df})
			oci := filepath.Join(t.TempDir(), "oci")
			res := testenv.Run(t, dir, nil, "build", "--progress=plain", "--isolation", isolation,
				"--snapshotter", "overlay", "-o", "type=oci,tar=false,dest="+oci, ".")
			if res.ExitCode != 0 {
				t.Fatalf("build with repeated layers failed: exit %d\n%s", res.ExitCode, grepLines(res.Stderr, "error"))
			}
			checkTree(t, treeFromLayout(t, oci), map[string]want{
				"one": {typ: tar.TypeReg, mode: 0o644, content: "one\n"},
				"two": {typ: tar.TypeReg, mode: 0o644, content: "one\n"},
			})
			if strings.Contains(res.Stderr, "too many levels") {
				t.Errorf("overlay error in the output:\n%s", res.Stderr)
			}
		})
	}
}
