package executor

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/mount"
	"github.com/kiln-build/kiln/internal/testenv"
)

func TestMain(m *testing.M) {
	Init() // the chroot executor's child is this test binary
	os.Exit(m.Run())
}

const (
	testPasswd = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
	testGroup  = "root:x:0:\nstaff:x:50:app\napp:x:1000:\n"
)

// busyboxRoot makes a root filesystem from Debian's busybox-static: /bin
// with every applet linked, /etc/passwd and /etc/group, and nothing else
// (no /proc, /dev, /sys, /etc/resolv.conf, /etc/hosts), so every mount
// point the executor needs is a stub it must remove.
func busyboxRoot(t *testing.T) string {
	t.Helper()
	bb := testenv.Need(t, "busybox")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(bb)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(dir, "bin/busybox"), os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WriteFiles(t, dir, map[string]string{
		"etc/passwd": testPasswd,
		"etc/group":  testGroup,
	})
	return dir
}

// rootKind says how a test gives the executor its root: one rbind of a
// directory (the copying snapshotter's shape) or an overlay whose writes go
// to an upper directory (the overlay snapshotter's).
type rootKind string

const (
	rbindRoot   rootKind = "rbind"
	overlayRoot rootKind = "overlay"
)

// testRoot is a root filesystem for one Run: its mounts, and the directory
// where the run's writes land.
type testRoot struct {
	mounts []mount.Mount
	base   string // the image's files
	writes string // where files written by the process appear
}

func newTestRoot(t *testing.T, kind rootKind) testRoot {
	t.Helper()
	base := busyboxRoot(t)
	if kind == rbindRoot {
		return testRoot{
			mounts: []mount.Mount{{Type: "bind", Source: base, Options: []string{"rbind"}}},
			base:   base, writes: base,
		}
	}
	d := t.TempDir()
	upper, work := filepath.Join(d, "upper"), filepath.Join(d, "work")
	for _, p := range []string{upper, work} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return testRoot{
		mounts: []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{
			"lowerdir=" + base, "upperdir=" + upper, "workdir=" + work,
		}}},
		base: base, writes: upper,
	}
}
