package state

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kiln-build/kiln/internal/lock"
	"github.com/kiln-build/kiln/internal/mount"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("state tests need root (tmpfs mounts)")
		}
		t.Skip("state tests need root")
	}
}

func TestBeginCloseLeavesNothing(t *testing.T) {
	needRoot(t)
	root := t.TempDir()
	b, err := Begin(root, tmpParent(t))
	if err != nil {
		t.Fatal(err)
	}
	mem, err := b.Mem()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mem, "s"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, _ := mount.IsMountPoint(mem); !ok {
		t.Fatal("Mem is not a mount point")
	}
	// A live build is never swept.
	if sw, err := Sweep(context.Background(), root); err != nil || sw.Builds != 0 {
		t.Fatalf("sweep of a live build: %+v, %v", sw, err)
	}
	if _, err := os.Stat(filepath.Join(mem, "s")); err != nil {
		t.Fatalf("sweep touched a live build: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(root, "run")); len(left) != 0 {
		t.Fatalf("left after Close: %v", left)
	}
	if _, err := os.Stat(b.TempDir()); !os.IsNotExist(err) {
		t.Fatalf("temp dir left after Close: %v", err)
	}
	if mps, _ := mount.MountPointsUnder(root); len(mps) != 0 {
		t.Fatalf("mounts left after Close: %v", mps)
	}
}

// A build killed with SIGKILL leaves its directory, a mounted tmpfs with a
// secret, an overlay-like mount and a partial file in a cache dest; the
// next Sweep removes all of it, but not a partial file whose store has a
// live writer.
func TestSweepAfterKill(t *testing.T) {
	if root := os.Getenv("KILN_STATE_CHILD"); root != "" {
		child(root)
		return
	}
	needRoot(t)
	root := t.TempDir()
	temp := t.TempDir()
	owned := t.TempDir()
	if err := os.Mkdir(filepath.Join(owned, ".new-someone-else"), 0o755); err != nil {
		t.Fatal(err)
	}
	dest := t.TempDir()
	busy := t.TempDir()
	for _, d := range []string{dest, busy} {
		if err := os.MkdirAll(filepath.Join(d, "tmp"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "tmp", "w-1"), []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A live writer in busy holds its lock shared.
	writer, err := lock.Acquire(context.Background(), filepath.Join(busy, "lock"), lock.Shared)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Unlock()

	cmd := exec.Command(os.Args[0], "-test.run=^TestSweepAfterKill$")
	cmd.Env = append(os.Environ(), "KILN_STATE_CHILD="+root, "KILN_STATE_TMP="+temp, "KILN_STATE_OWNED="+owned, "KILN_STATE_DESTS="+dest+":"+busy)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if n, _ := out.Read(buf); string(buf[:n]) != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child said %q", buf[:n])
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()

	mps, _ := mount.MountPointsUnder(root)
	tmps, _ := mount.MountPointsUnder(temp)
	if len(mps) != 0 || len(tmps) != 2 {
		t.Fatalf("the dead build left mounts %v under its dir and %v under its temp dir, want 0 and 2 (the test is wrong)", mps, tmps)
	}
	sw, err := Sweep(context.Background(), root)
	if err != nil {
		t.Fatal(err)
	}
	if sw.Builds != 1 || sw.Mounts != 2 {
		t.Errorf("swept %+v, want 1 build and 2 mounts", sw)
	}
	for _, d := range []string{root, temp} {
		if mps, _ := mount.MountPointsUnder(d); len(mps) != 0 {
			t.Errorf("mounts left after the sweep: %v", mps)
		}
	}
	if left, _ := os.ReadDir(temp); len(left) != 0 {
		t.Errorf("temp dirs left after the sweep: %v", left)
	}
	if left, _ := os.ReadDir(owned); len(left) != 1 || left[0].Name() != ".new-someone-else" {
		t.Errorf("in a dir holding the dead build's own files, the sweep left %v, want only another's", left)
	}
	if left, _ := os.ReadDir(filepath.Join(root, "run")); len(left) != 0 {
		t.Errorf("build dirs left after the sweep: %v", left)
	}
	if _, err := os.Stat(filepath.Join(dest, "tmp", "w-1")); !os.IsNotExist(err) {
		t.Errorf("partial file in an idle dest survived the sweep: %v", err)
	}
	if _, err := os.Stat(filepath.Join(busy, "tmp", "w-1")); err != nil {
		t.Errorf("partial file of a store with a live writer was removed: %v", err)
	}
}

// child begins a build, fills it like a RUN in progress, and waits to be
// killed.
func child(root string) {
	b, err := Begin(root, os.Getenv("KILN_STATE_TMP"))
	if err != nil {
		panic(err)
	}
	mem, err := b.Mem()
	if err != nil {
		panic(err)
	}
	if err := os.WriteFile(filepath.Join(mem, "secret"), []byte("hunter2"), 0o600); err != nil {
		panic(err)
	}
	target := filepath.Join(b.TempDir(), "rootfs")
	if err := os.Mkdir(target, 0o755); err != nil {
		panic(err)
	}
	if err := (mount.Mount{Type: "tmpfs", Source: "tmpfs"}).Mount(target); err != nil {
		panic(err)
	}
	owned := os.Getenv("KILN_STATE_OWNED")
	if err := os.MkdirAll(filepath.Join(owned, ".new-"+b.ID()+"-1", "sub"), 0o755); err != nil {
		panic(err)
	}
	if err := b.RecordOwned(filepath.Join(owned, ".new-"+b.ID()+"-*")); err != nil {
		panic(err)
	}
	for _, d := range strings.Split(os.Getenv("KILN_STATE_DESTS"), ":") {
		if err := b.RecordPartial(filepath.Join(d, "lock"), filepath.Join(d, "tmp")); err != nil {
			panic(err)
		}
	}
	os.Stdout.WriteString("ready\n")
	select {}
}

// tmpParent is the temp parent tests give Begin.
func tmpParent(t *testing.T) string {
	if p := os.Getenv("KILN_STATE_TMP"); p != "" {
		return p
	}
	return t.TempDir()
}

func TestRecordOwnedRefusesOthersFiles(t *testing.T) {
	b, err := Begin(t.TempDir(), tmpParent(t))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, p := range []string{"/tmp/.new-*", "/tmp/" + b.ID() + "/x*", "/tmp/[.new-" + b.ID()} {
		if err := b.RecordOwned(p); err == nil {
			t.Errorf("RecordOwned(%q) accepted a pattern that may match another build's files", p)
		}
	}
}

func TestBeginNamesAreUnique(t *testing.T) {
	root := t.TempDir()
	seen := map[string]bool{}
	var all []*Build
	for range 20 {
		b, err := Begin(root, tmpParent(t))
		if err != nil {
			t.Fatal(err)
		}
		if seen[b.ID()] {
			t.Fatalf("id %s handed out twice", b.ID())
		}
		seen[b.ID()] = true
		all = append(all, b)
	}
	for _, b := range all {
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Live lists a running build's directory, and not once it ended.
func TestLiveListsRunningBuilds(t *testing.T) {
	root := t.TempDir()
	b, err := Begin(root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	live, err := Live(root)
	if err != nil || len(live) != 1 || filepath.Base(live[0]) != b.ID() {
		t.Fatalf("Live = %v, %v; want the running build %s", live, err, b.ID())
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if live, err := Live(root); err != nil || len(live) != 0 {
		t.Errorf("Live after Close = %v, %v; want none", live, err)
	}
}
