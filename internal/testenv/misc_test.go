package testenv

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// recordingTB captures Skipf/Fatalf instead of stopping the goroutine, so
// the CI/skip decision of need can be observed.
type recordingTB struct {
	testing.TB
	skipped, failed string
}

func (r *recordingTB) Helper()                        {}
func (r *recordingTB) Skipf(format string, a ...any)  { r.skipped = fmt.Sprintf(format, a...) }
func (r *recordingTB) Fatalf(format string, a ...any) { r.failed = fmt.Sprintf(format, a...) }

func TestNeed(t *testing.T) {
	tests := []struct {
		name        string
		program     string
		ci          bool
		wantPath    bool
		wantSkip    bool
		wantFailure bool
	}{
		{"present", "sh", false, true, false, false},
		{"present in CI", "sh", true, true, false, false},
		{"missing skips locally", "kiln-no-such-program", false, false, true, false},
		{"missing fails in CI", "kiln-no-such-program", true, false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &recordingTB{TB: t}
			got := need(r, tt.program, tt.ci)
			if (got != "") != tt.wantPath {
				t.Errorf("path = %q, want found=%v", got, tt.wantPath)
			}
			if (r.skipped != "") != tt.wantSkip {
				t.Errorf("skipped = %q, want skip=%v", r.skipped, tt.wantSkip)
			}
			if (r.failed != "") != tt.wantFailure {
				t.Errorf("failed = %q, want failure=%v", r.failed, tt.wantFailure)
			}
			if msg := r.skipped + r.failed; msg != "" && !strings.Contains(msg, tt.program) {
				t.Errorf("message %q does not name %s", msg, tt.program)
			}
		})
	}
}

func TestRegistryRetriesTakenPort(t *testing.T) {
	Need(t, "docker-registry")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port

	calls := 0
	pickPort = func() (int, error) {
		calls++
		if calls == 1 {
			return takenPort, nil
		}
		return freePort()
	}
	t.Cleanup(func() { pickPort = freePort })

	host := Registry(t)
	if calls != 2 {
		t.Errorf("picked a port %d times, want 2 (one collision, one retry)", calls)
	}
	if _, port, _ := net.SplitHostPort(host); port == fmt.Sprint(takenPort) {
		t.Errorf("Registry returned the taken port %s", host)
	}
}

func TestWriteFiles(t *testing.T) {
	dir := t.TempDir()
	WriteFiles(t, dir, map[string]string{
		"Dockerfile":      "FROM scratch\n",
		"src/a/b.txt":     "deep",
		"link":            "symlink:src/a/b.txt",
		"dangling":        "symlink:../outside",
		"empty/":          "",
		"src/a/empty.txt": "",
	})
	tests := []struct {
		path    string
		mode    os.FileMode
		content string
		link    string
	}{
		{path: "Dockerfile", mode: 0o644, content: "FROM scratch\n"},
		{path: "src/a/b.txt", mode: 0o644, content: "deep"},
		{path: "src/a/empty.txt", mode: 0o644},
		{path: "src", mode: os.ModeDir | 0o755},
		{path: "empty", mode: os.ModeDir | 0o755},
		{path: "link", mode: os.ModeSymlink | 0o777, link: "src/a/b.txt"},
		{path: "dangling", mode: os.ModeSymlink | 0o777, link: "../outside"},
	}
	for _, tt := range tests {
		p := filepath.Join(dir, tt.path)
		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", tt.path, err)
			continue
		}
		if fi.Mode() != tt.mode {
			t.Errorf("%s: mode %v, want %v", tt.path, fi.Mode(), tt.mode)
		}
		if tt.link != "" {
			if got, _ := os.Readlink(p); got != tt.link {
				t.Errorf("%s -> %q, want %q", tt.path, got, tt.link)
			}
		} else if fi.Mode().IsRegular() {
			if got, _ := os.ReadFile(p); string(got) != tt.content {
				t.Errorf("%s = %q, want %q", tt.path, got, tt.content)
			}
		}
	}
}

func TestWriteFilesRefusesEscapes(t *testing.T) {
	for _, bad := range []string{"../x", "/etc/x", "a/../../x"} {
		r := &recordingTB{TB: t}
		WriteFiles(r, t.TempDir(), map[string]string{bad: "x"})
		if r.failed == "" {
			t.Errorf("WriteFiles accepted %q", bad)
		}
	}
}
