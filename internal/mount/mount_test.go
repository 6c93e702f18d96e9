package mount

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true: mount tests need root")
		}
		t.Skip("mount tests need root")
	}
}

func TestReadOnlyBind(t *testing.T) {
	needRoot(t)
	src, target := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := (Mount{Type: "bind", Source: src, Options: []string{"rbind", "ro"}}).Mount(target); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = UnmountAll(target) })
	if b, err := os.ReadFile(filepath.Join(target, "f")); err != nil || string(b) != "x" {
		t.Fatalf("read through bind: %q %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(target, "g"), nil, 0o644); err == nil {
		t.Error("wrote through a read-only bind mount")
	}
	if ok, _ := IsMountPoint(target); !ok {
		t.Error("IsMountPoint = false for a bind mount")
	}
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	if ok, _ := IsMountPoint(target); ok {
		t.Error("still mounted after Unmount")
	}
	if err := Unmount(target); err != nil {
		t.Errorf("unmounting a plain directory: %v", err)
	}
}

func TestOverlayAndUnmountAll(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	lower, upper, work, merged := filepath.Join(dir, "l"), filepath.Join(dir, "u"), filepath.Join(dir, "w"), filepath.Join(dir, "m")
	for _, d := range []string{lower, upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(lower, "a"), []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	ov := Mount{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work}}
	if err := All([]Mount{ov}, merged); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(merged, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := (Mount{Type: "tmpfs", Source: "tmpfs", Options: []string{"size=1m"}}).Mount(sub); err != nil {
		t.Fatal(err)
	}
	mps, err := MountPointsUnder(dir)
	if err != nil || len(mps) != 2 || mps[0] != sub {
		t.Fatalf("MountPointsUnder = %v, %v; want the tmpfs first, then the overlay", mps, err)
	}
	if err := os.Remove(filepath.Join(merged, "a")); err != nil {
		t.Fatal(err)
	}
	if err := UnmountAll(dir); err != nil {
		t.Fatal(err)
	}
	if mps, _ := MountPointsUnder(dir); len(mps) != 0 {
		t.Errorf("left mounted: %v", mps)
	}
	if fi, err := os.Lstat(filepath.Join(upper, "a")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("deleting a lower file must leave a whiteout in upper: %v %v", fi, err)
	}
}

func TestMountErrorNamesTarget(t *testing.T) {
	needRoot(t)
	err := (Mount{Type: "bind", Source: "/nonexistent-kiln", Options: []string{"bind"}}).Mount(t.TempDir())
	if err == nil || errors.Unwrap(err) == nil {
		t.Fatalf("err = %v, want a wrapped mount error", err)
	}
}

func TestUnescape(t *testing.T) {
	if got := unescape(`/a\040b\011c`); got != "/a b\tc" {
		t.Errorf("unescape = %q", got)
	}
}
