package executor

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/kiln-build/kiln/internal/mount"
	"github.com/kiln-build/kiln/internal/testenv"
)

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	testenv.WriteFiles(t, root, map[string]string{"etc/passwd": testPasswd, "etc/group": testGroup})
	noFiles := t.TempDir()
	for _, tc := range []struct {
		root, user string
		uid, gid   uint32
		sgids      []uint32
		home       string
		wantErr    bool
	}{
		{root, "", 0, 0, nil, "/root", false},
		{root, "root", 0, 0, nil, "/root", false},
		{root, "app", 1000, 1000, []uint32{50}, "/home/app", false},
		{root, "1000", 1000, 1000, []uint32{50}, "/home/app", false},
		{root, "1000:1000", 1000, 1000, nil, "/home/app", false},
		{root, "app:staff", 1000, 50, nil, "/home/app", false},
		{root, "app:7", 1000, 7, nil, "/home/app", false},
		{root, "4242", 4242, 0, nil, "/", false},
		{root, "nobody", 0, 0, nil, "", true},
		{root, "app:nogroup", 0, 0, nil, "", true},
		{noFiles, "1000", 1000, 0, nil, "/", false},
		{noFiles, "app", 0, 0, nil, "", true},
	} {
		uid, gid, sgids, home, err := resolveUser(tc.root, tc.user)
		if tc.wantErr {
			if err == nil {
				t.Errorf("%q: resolved to %d:%d, want an error", tc.user, uid, gid)
			}
			continue
		}
		if err != nil || uid != tc.uid || gid != tc.gid || !reflect.DeepEqual(sgids, tc.sgids) || home != tc.home {
			t.Errorf("%q: got %d %d %v %q %v, want %d %d %v %q", tc.user, uid, gid, sgids, home, err, tc.uid, tc.gid, tc.sgids, tc.home)
		}
	}
}

func TestResolveUserReadsPasswdInsideRoot(t *testing.T) {
	// An image whose /etc/passwd is an absolute symlink must be read from
	// the image, not from the host.
	root := t.TempDir()
	testenv.WriteFiles(t, root, map[string]string{"real/passwd": "builder:x:77:77::/b:/bin/sh\n"})
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/real/passwd", filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	uid, gid, _, home, err := resolveUser(root, "builder")
	if err != nil || uid != 77 || gid != 77 || home != "/b" {
		t.Fatalf("got %d:%d %q %v", uid, gid, home, err)
	}
}

func TestCompleteEnv(t *testing.T) {
	for _, tc := range []struct {
		env, want []string
	}{
		{nil, []string{DefaultPathEnv, "HOME=/h"}},
		{[]string{"A=1"}, []string{"A=1", DefaultPathEnv, "HOME=/h"}},
		{[]string{"PATH=/x", "HOME=/y"}, []string{"PATH=/x", "HOME=/y"}},
		{[]string{"PATHX=1"}, []string{"PATHX=1", DefaultPathEnv, "HOME=/h"}},
	} {
		if got := completeEnv(tc.env, "/h"); !slices.Equal(got, tc.want) {
			t.Errorf("completeEnv(%q) = %q, want %q", tc.env, got, tc.want)
		}
	}
}

func TestMissingPathsAndRemoveStubs(t *testing.T) {
	root := t.TempDir()
	testenv.WriteFiles(t, root, map[string]string{"etc/passwd": "", "run/keep": "x"})
	if err := os.Symlink("/../../outside", filepath.Join(root, "etc/hosts")); err != nil {
		t.Fatal(err)
	}
	got, err := missingPaths(root, []string{"/etc/resolv.conf", "/etc/hosts", "/run/secrets/a", "/run/secrets/b", "/etc/passwd", "/cache/x/y"})
	if err != nil {
		t.Fatal(err)
	}
	// Deepest first, so a parent is tried after its children are gone.
	want := []string{"run/secrets/a", "run/secrets/b", "cache/x/y", "etc/resolv.conf", "run/secrets", "cache/x", "outside", "cache"}
	if !slices.Equal(got, want) {
		t.Fatalf("missingPaths = %q, want %q", got, want)
	}
	// Make the stubs as the mounts would, one of them used by the process.
	testenv.WriteFiles(t, root, map[string]string{"etc/resolv.conf": "", "run/secrets/a": "", "run/secrets/b": "", "cache/x/y/written": "data"})
	if err := os.Mkdir(filepath.Join(root, "outside"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := removeStubs(root, got); err != nil {
		t.Fatal(err)
	}
	for p, wantExist := range map[string]bool{
		"etc/resolv.conf": false, "outside": false, "run/secrets": false, "run/keep": true,
		"cache/x/y/written": true, "etc/passwd": true,
	} {
		_, err := os.Lstat(filepath.Join(root, p))
		if (err == nil) != wantExist {
			t.Errorf("/%s exists=%v, want %v", p, err == nil, wantExist)
		}
	}
}

func TestValidate(t *testing.T) {
	root := []mount.Mount{{Type: "bind", Source: "/x", Options: []string{"rbind"}}}
	for _, tc := range []struct {
		name string
		spec Spec
		ok   bool
	}{
		{"minimal", Spec{Root: root, Args: []string{"true"}}, true},
		{"no args", Spec{Root: root}, false},
		{"no root", Spec{Args: []string{"true"}}, false},
		{"bad network", Spec{Root: root, Args: []string{"true"}, Network: "bridge"}, false},
		{"relative cwd", Spec{Root: root, Args: []string{"true"}, Cwd: "src"}, false},
		{"relative mount", Spec{Root: root, Args: []string{"true"}, Mounts: []Mount{{Destination: "x", Type: "tmpfs"}}}, false},
		{"mount at /", Spec{Root: root, Args: []string{"true"}, Mounts: []Mount{{Destination: "/", Type: "tmpfs"}}}, false},
		{"bad mount type", Spec{Root: root, Args: []string{"true"}, Mounts: []Mount{{Destination: "/x", Type: "nfs"}}}, false},
	} {
		err := validate(tc.spec)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidSpec)) {
			t.Errorf("%s: validate = %v", tc.name, err)
		}
	}
}

func TestNew(t *testing.T) {
	if _, err := New("docker", Config{}); !errors.Is(err, ErrUnknownExecutor) {
		t.Errorf("New(docker) = %v, want ErrUnknownExecutor", err)
	}
	ex, err := New("chroot", Config{})
	if err != nil || ex.Name() != "chroot" {
		t.Fatalf("New(chroot) = %v, %v", ex, err)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := New("runc", Config{}); !errors.Is(err, ErrRuncNotFound) {
		t.Errorf("New(runc) without runc = %v, want ErrRuncNotFound", err)
	}
	if ex, err := New("auto", Config{}); err != nil || ex.Name() != "chroot" {
		t.Errorf("New(auto) without runc = %v, %v; want chroot", ex, err)
	}
}

func TestExitErrorMessage(t *testing.T) {
	if got := (&ExitError{Code: 3}).Error(); got != "process exited with code 3" {
		t.Errorf("got %q", got)
	}
}
