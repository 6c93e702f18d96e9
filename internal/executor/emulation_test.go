package executor

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestCheckArch(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skip("the cases are written for an amd64 host")
	}
	dir := t.TempDir()
	old := binfmtDir
	binfmtDir = dir
	t.Cleanup(func() { binfmtDir = old })
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Native architectures need nothing, even without binfmt_misc.
	for _, arch := range []string{"amd64", "386"} {
		if err := CheckArch(arch); err != nil {
			t.Errorf("CheckArch(%s) = %v, want nil", arch, err)
		}
	}
	for _, c := range []struct {
		name, status, handler, want string
	}{
		{"not mounted", "", "", "not mounted"},
		{"no handler", "enabled\n", "", "qemu-aarch64 is missing"},
		{"disabled", "enabled\n", "disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n", "disabled"},
		{"no F flag", "enabled\n", "enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\n", "fix binary"},
		{"usable", "enabled\n", "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n", ""},
	} {
		os.Remove(filepath.Join(dir, "status"))
		os.Remove(filepath.Join(dir, "qemu-aarch64"))
		if c.status != "" {
			write("status", c.status)
		}
		if c.handler != "" {
			write("qemu-aarch64", c.handler)
		}
		err := CheckArch("arm64")
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: CheckArch(arm64) = %v, want nil", c.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrNoEmulation) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: CheckArch(arm64) = %v, want ErrNoEmulation mentioning %q", c.name, err, c.want)
		}
	}
}
