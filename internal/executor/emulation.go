package executor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// binfmtDir is where the kernel lists binfmt_misc handlers (a variable
// for tests).
var binfmtDir = "/proc/sys/fs/binfmt_misc"

// qemuNames are QEMU's names for Go's architectures: its handlers are
// registered as qemu-NAME.
var qemuNames = map[string]string{
	"amd64": "x86_64", "arm64": "aarch64", "arm": "arm", "386": "i386",
	"ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x", "riscv64": "riscv64",
	"mips64le": "mips64el", "mips64": "mips64", "mipsle": "mipsel", "mips": "mips",
	"loong64": "loongarch64",
}

// ErrNoEmulation: a RUN for a foreign architecture cannot run here.
var ErrNoEmulation = errors.New("no emulation for this architecture")

// CheckArch reports whether a RUN's binaries for arch (a Go architecture
// name, as platforms use) run on this machine: natively, or through QEMU
// user emulation registered with binfmt_misc, as BuildKit runs foreign
// RUN steps. The handler must have the F (fix binary) flag: the kernel
// then opens the emulator when it is registered, so it works inside a
// RUN's root filesystem, which holds no emulator of its own. Debian's
// qemu-user-static registers its handlers so.
func CheckArch(arch string) error {
	if arch == runtime.GOARCH || (runtime.GOARCH == "amd64" && arch == "386") {
		return nil
	}
	q, ok := qemuNames[arch]
	if !ok {
		return fmt.Errorf("%w: architecture %s is unknown to QEMU", ErrNoEmulation, arch)
	}
	install := "install QEMU user emulation (Debian: apt-get install qemu-user-static binfmt-support)"
	if _, err := os.Stat(filepath.Join(binfmtDir, "status")); err != nil {
		return fmt.Errorf("%w: running %s binaries on %s needs binfmt_misc, which is not mounted (mount -t binfmt_misc binfmt_misc %s), and QEMU user emulation: %s",
			ErrNoEmulation, arch, runtime.GOARCH, binfmtDir, install)
	}
	handler := filepath.Join(binfmtDir, "qemu-"+q)
	raw, err := os.ReadFile(handler)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: running %s binaries on %s needs a QEMU handler (%s is missing): %s", ErrNoEmulation, arch, runtime.GOARCH, handler, install)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoEmulation, err)
	}
	lines := strings.Split(string(raw), "\n")
	if lines[0] != "enabled" {
		return fmt.Errorf("%w: the QEMU handler %s is disabled (echo 1 > %s)", ErrNoEmulation, handler, handler)
	}
	for _, l := range lines {
		if flags, ok := strings.CutPrefix(l, "flags: "); ok && !strings.Contains(flags, "F") {
			return fmt.Errorf("%w: the QEMU handler %s lacks the F (fix binary) flag, so the emulator cannot be found inside a RUN's root filesystem; register it with F (qemu-user-static does)", ErrNoEmulation, handler)
		}
	}
	return nil
}
