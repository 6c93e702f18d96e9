package ownership

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// What an unprivileged build records is read back when the layer is
// written: files through an extended attribute, symlinks from memory.
func TestRecordedOwnerIsReadBack(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	link := filepath.Join(dir, "l")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f, link} {
		if err := record(p, 7, 8); err != nil {
			t.Fatalf("record %s: %v", p, err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if uid, gid := of(p, &st); uid != 7 || gid != 8 {
			t.Errorf("%s: owner %d:%d, want the recorded 7:8", filepath.Base(p), uid, gid)
		}
	}
	// Without a record, a file of kiln's own user is root's.
	g := filepath.Join(dir, "g")
	if err := os.WriteFile(g, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(g, &st); err != nil {
		t.Fatal(err)
	}
	st.Uid, st.Gid = uint32(os.Geteuid()), 99
	if uid, gid := of(g, &st); uid != 0 || gid != 0 {
		t.Errorf("unrecorded file of kiln's user: %d:%d, want 0:0", uid, gid)
	}
}
