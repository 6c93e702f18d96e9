package snapshot

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/kiln-build/kiln/internal/mount"
)

// overlayProbe is the cached answer for one root: whether overlay works
// there, and which optional mount options the kernel accepts.
type overlayProbe struct {
	once      sync.Once
	supported bool
	extra     []string
	err       error
}

var probes sync.Map // absolute root -> *overlayProbe

// overlayExtras are options that make an upper dir self-contained: with
// redirect_dir on, a renamed lower directory is recorded as a redirect
// xattr and its content stays in the lower layer, invisible to Diff; with
// metacopy on, a chmod copies up metadata only and the data stays below.
// volatile (Linux 5.10) spares the unmount at the end of every step a
// sync of the whole filesystem under the upper dir: after a first miss
// that is the hundreds of megabytes of base layers just extracted, and
// whatever else the host wrote, which BuildKit's snapshots wait for too.
// A step's snapshot has no use after a crash (it is discarded and the
// step runs again), and each one is mounted once, so the mount that
// volatile refuses (the same upper and work dirs again) never comes.
var overlayExtras = []string{"redirect_dir=off", "metacopy=off", "volatile"}

// OverlaySupported reports whether an overlay mount works under root, by
// mounting a tiny one in a temporary directory there (needs root or
// CAP_SYS_ADMIN). The answer is probed once per root and cached.
func OverlaySupported(root string) bool {
	p := probeOverlay(root)
	return p.supported
}

func probeOverlay(root string) *overlayProbe {
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	v, _ := probes.LoadOrStore(root, &overlayProbe{})
	p := v.(*overlayProbe)
	p.once.Do(func() {
		if err := validRoot(root); err != nil {
			p.err = err
			return
		}
		p.supported, p.extra, p.err = runProbe(root)
	})
	return p
}

// runProbe mounts lower+upper at a merged dir, writes through it, and then
// finds which of overlayExtras the kernel takes (old kernels refuse
// unknown options, and metacopy=off may be refused with some features).
func runProbe(root string) (bool, []string, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return false, nil, fmt.Errorf("probe overlay: %w", err)
	}
	dir, err := os.MkdirTemp(root, "probe-")
	if err != nil {
		return false, nil, fmt.Errorf("probe overlay: %w", err)
	}
	defer os.RemoveAll(dir)
	var dirs [4]string
	for i, n := range []string{"l", "u", "w", "m"} {
		dirs[i] = filepath.Join(dir, n)
		if err := os.Mkdir(dirs[i], 0o755); err != nil {
			return false, nil, fmt.Errorf("probe overlay: %w", err)
		}
	}
	lower, upper, work, merged := dirs[0], dirs[1], dirs[2], dirs[3]
	try := func(extra []string) error {
		// Each attempt needs a clean work dir.
		if err := os.RemoveAll(work); err != nil {
			return err
		}
		if err := os.Mkdir(work, 0o755); err != nil {
			return err
		}
		opts := append([]string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work}, extra...)
		m := mount.Mount{Type: "overlay", Source: "overlay", Options: opts}
		if err := m.Mount(merged); err != nil {
			return err
		}
		werr := os.WriteFile(filepath.Join(merged, "probe"), nil, 0o644)
		if err := mount.Unmount(merged); err != nil {
			return err
		}
		return werr
	}
	if err := try(nil); err != nil {
		return false, nil, fmt.Errorf("probe overlay under %s: %w", root, err)
	}
	var extra []string
	for _, o := range overlayExtras {
		if try(append(append([]string(nil), extra...), o)) == nil {
			extra = append(extra, o)
		}
	}
	return true, extra, nil
}

// overlayExtraOptions returns the accepted optional options for root.
func overlayExtraOptions(root string) []string {
	return append([]string(nil), probeOverlay(root).extra...)
}

// probeError explains why overlay is unsupported under root, for errors.
func probeError(root string) string {
	if err := probeOverlay(root).err; err != nil {
		return strings.TrimSpace(err.Error())
	}
	return ""
}
