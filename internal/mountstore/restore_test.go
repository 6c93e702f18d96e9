package mountstore

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A fresh restore skips the chown and chmod a new file or directory would
// not need; modes the umask would clear, setuid, setgid and sticky bits,
// owners other than kiln's, and a mount directory that passes its group
// down to new files must all still come out as saved.
func TestFreshRestoreKeepsModesAndOwnersCreationWouldNotGive(t *testing.T) {
	needRoot(t)
	old := unix.Umask(0o027) // clears bits that 0o666 and 0o777 files have
	defer unix.Umask(old)
	src := filepath.Join(t.TempDir(), "m")
	must(t, os.MkdirAll(filepath.Join(src, "sub"), 0o755))
	modes := map[string]os.FileMode{
		"rw-all": 0o666, "rwx-all": 0o777, "plain": 0o644, "none": 0,
		"setuid": 0o4755 | os.ModeSetuid, "setgid": 0o755 | os.ModeSetgid, "sticky": 0o644 | os.ModeSticky,
	}
	for name, mode := range modes {
		for _, d := range []string{src, filepath.Join(src, "sub")} {
			p := filepath.Join(d, name)
			must(t, os.WriteFile(p, []byte(name), 0o600))
			must(t, os.Chmod(p, mode))
		}
	}
	write(t, filepath.Join(src, "sub", "owned"), []byte("theirs"), 0o640)
	must(t, os.Chown(filepath.Join(src, "sub", "owned"), 1000, 1000))
	write(t, filepath.Join(src, "group"), []byte("group"), 0o640)
	must(t, os.Chown(filepath.Join(src, "group"), 0, 1000))
	// Directories: made by the restore as root's 0755, so these differ
	// from what it made in owner, mode or both.
	for name, mode := range map[string]os.FileMode{"dir-755": 0o755, "dir-700": 0o700, "dir-sticky": 0o777 | os.ModeSticky, "dir-setgid": 0o775 | os.ModeSetgid} {
		p := filepath.Join(src, name)
		must(t, os.Mkdir(p, 0o700))
		must(t, os.Chmod(p, mode))
	}
	must(t, os.Chown(filepath.Join(src, "dir-755"), 0, 1000))
	must(t, os.Chown(filepath.Join(src, "dir-setgid"), 1000, 1000))
	st := store(t)
	want := dump(t, src)
	save(t, st, src, SaveOptions{})

	for _, setgid := range []bool{false, true} {
		dst := filepath.Join(t.TempDir(), "r")
		must(t, os.MkdirAll(dst, 0o700))
		if setgid {
			// New files here get group 4242, not kiln's.
			must(t, os.Chown(dst, 0, 4242))
			must(t, os.Chmod(dst, 0o2770|os.ModeSetgid))
		}
		r := restore(t, st, dst, RestoreOptions{})
		if r.Missing != 0 || len(r.Problems) != 0 {
			t.Fatalf("restore: %+v", r)
		}
		if got := dump(t, dst); got != want {
			t.Errorf("setgid mount dir %v: restored tree differs\n got:\n%s\nwant:\n%s", setgid, got, want)
		}
	}
}
