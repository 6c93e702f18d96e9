package executor

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/mount"
)

// Init must be called first thing in main (and in TestMain of tests that
// use the chroot executor). In the chroot executor's child it sets up the
// container and execs the process, never returning; anywhere else it
// returns at once.
func Init() {
	if len(os.Args) == 0 || os.Args[0] != childArg0 {
		return
	}
	// The capability bounding set and capset are per thread: set them on
	// the thread that will call execve.
	runtime.LockOSThread()
	unix.CloseOnExec(childErrorFD)
	errPipe := os.NewFile(childErrorFD, "setup-errors")
	err := childMain()
	fmt.Fprint(errPipe, err.Error())
	os.Exit(1)
}

// childMain only returns on failure: success is an exec.
func childMain() error {
	f := os.NewFile(childConfigFD, "config")
	data, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var cfg childConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return fmt.Errorf("decode config: %w", err)
	}
	// Nothing mounted from here on may propagate back to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := setupMounts(cfg); err != nil {
		return err
	}
	if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
		return fmt.Errorf("set hostname: %w", err)
	}
	if cfg.NetNone {
		if err := loopbackUp(); err != nil {
			return err
		}
	}
	lastCap, err := lastCapability()
	if err != nil {
		return err
	}
	if err := pivotRoot(cfg.Rootfs); err != nil {
		return err
	}
	return execProcess(cfg, lastCap)
}

// setupMounts makes the default mounts, resolv.conf and hosts, then the
// spec's mounts, each mount point resolved inside the root as it stands at
// that moment, then masks and write-protects the kernel files.
func setupMounts(cfg childConfig) error {
	root := cfg.Rootfs
	for _, sm := range systemMounts {
		target, err := mountPoint(root, sm.dest, false)
		if err != nil {
			return err
		}
		m := mount.Mount{Type: sm.typ, Source: sm.source, Options: sm.options}
		if cfg.Insecure && sm.dest == "/sys" {
			m.Options = writable(m.Options)
		}
		if err := m.Mount(target); err != nil {
			return err
		}
		if sm.dest == "/dev" {
			if err := populateDev(target); err != nil {
				return err
			}
		}
	}
	for _, b := range [][2]string{{cfg.ResolvConf, "/etc/resolv.conf"}, {cfg.Hosts, "/etc/hosts"}} {
		target, err := mountPoint(root, b[1], true)
		if err != nil {
			return err
		}
		m := mount.Mount{Type: "bind", Source: b[0], Options: []string{"rbind", "ro", "nosuid", "nodev"}}
		if err := m.Mount(target); err != nil {
			return err
		}
	}
	for _, m := range cfg.Mounts {
		file := false
		if m.Type == "bind" {
			fi, err := os.Stat(m.Source)
			if err != nil {
				return fmt.Errorf("mount %s: source: %w", m.Destination, err)
			}
			file = !fi.IsDir()
		}
		target, err := mountPoint(root, m.Destination, file)
		if err != nil {
			return err
		}
		if err := toMount(m).Mount(target); err != nil {
			return err
		}
	}
	if cfg.Insecure {
		return nil
	}
	return protectKernelFiles(root)
}

// toMount converts a spec mount to internal/mount's form; a "bind" with no
// bind option is a recursive bind, as runc reads it.
func toMount(m Mount) mount.Mount {
	out := mount.Mount{Type: m.Type, Source: m.Source, Options: m.Options}
	switch m.Type {
	case "bind":
		hasBind := false
		for _, o := range m.Options {
			hasBind = hasBind || o == "bind" || o == "rbind"
		}
		if !hasBind {
			out.Options = append([]string{"rbind"}, m.Options...)
		}
	case "tmpfs":
		if out.Source == "" {
			out.Source = "tmpfs"
		}
	case "overlay":
		if out.Source == "" {
			out.Source = "overlay"
		}
	}
	return out
}

// mountPoint resolves dest inside root (symlinks cannot leave it) and
// creates the mount point, a directory or an empty file, with its parents.
func mountPoint(root, dest string, file bool) (string, error) {
	target, err := securejoin.SecureJoin(root, dest)
	if err != nil {
		return "", fmt.Errorf("resolve mount point %s: %w", dest, err)
	}
	rel, err := filepath.Rel(root, target)
	if err != nil {
		return "", fmt.Errorf("resolve mount point %s: %w", dest, err)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return "", fmt.Errorf("open root: %w", err)
	}
	defer r.Close()
	if !file {
		if err := r.MkdirAll(rel, 0o755); err != nil {
			return "", fmt.Errorf("create mount point %s: %w", dest, err)
		}
		return target, nil
	}
	if err := r.MkdirAll(filepath.Dir(rel), 0o755); err != nil {
		return "", fmt.Errorf("create mount point %s: %w", dest, err)
	}
	if _, err := r.Lstat(rel); errors.Is(err, os.ErrNotExist) {
		f, err := r.OpenFile(rel, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return "", fmt.Errorf("create mount point %s: %w", dest, err)
		}
		f.Close()
	}
	return target, nil
}

// populateDev fills the /dev tmpfs with runc's default devices and links.
func populateDev(dev string) error {
	for _, d := range devices {
		p := filepath.Join(dev, d.name)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("create /dev/%s: %w", d.name, err)
		}
		if err := unix.Chmod(p, 0o666); err != nil { // mknod is subject to umask
			return fmt.Errorf("chmod /dev/%s: %w", d.name, err)
		}
	}
	for _, l := range devSymlinks {
		if err := os.Symlink(l[1], filepath.Join(dev, l[0])); err != nil {
			return fmt.Errorf("create /dev/%s: %w", l[0], err)
		}
	}
	return nil
}

// protectKernelFiles applies containerd's masked and read-only paths.
func protectKernelFiles(root string) error {
	for _, p := range maskedPaths {
		target := filepath.Join(root, p) // under the fresh /proc and /sys
		fi, err := os.Lstat(target)
		if err != nil {
			continue
		}
		m := mount.Mount{Type: "bind", Source: filepath.Join(root, "dev/null"), Options: []string{"bind"}}
		if fi.IsDir() {
			m = mount.Mount{Type: "tmpfs", Source: "tmpfs", Options: []string{"ro", "nosuid", "nodev", "noexec"}}
		}
		if err := m.Mount(target); err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
	}
	for _, p := range readonlyPaths {
		target := filepath.Join(root, p)
		if _, err := os.Lstat(target); err != nil {
			continue
		}
		m := mount.Mount{Type: "bind", Source: target, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}}
		if err := m.Mount(target); err != nil {
			return fmt.Errorf("make %s read-only: %w", p, err)
		}
	}
	return nil
}

// loopbackUp brings lo up in the new network namespace, with the ioctls
// ip(8) would use, so the process has a working 127.0.0.1 and nothing else.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback: set up: %w", err)
	}
	return nil
}

// pivotRoot makes root the process's / and detaches the old root, runc's
// pivot_root(".", ".") way, which needs no directory for the old root.
func pivotRoot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("pivot_root: detach old root: %w", err)
	}
	return unix.Chdir("/")
}

func lastCapability() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse cap_last_cap: %w", err)
	}
	return n, nil
}

// dropCapabilities limits the bounding set to Docker's defaults and clears
// the inheritable and ambient sets, on this (locked) thread. Permitted and
// effective stay full until setuid/execve trims them: execve as root gives
// the bounding set, as any other user nothing.
func dropCapabilities(lastCap int) error {
	keep := map[int]bool{}
	for _, c := range defaultCaps {
		keep[c.num] = true
	}
	for c := 0; c <= lastCap; c++ {
		if keep[c] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// raiseAmbient makes every permitted capability of this thread effective,
// inheritable and ambient, so execve as a non-root user keeps them all.
func raiseAmbient(lastCap int) error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for i := range data {
		data[i].Effective, data[i].Inheritable = data[i].Permitted, data[i].Permitted
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	for c := 0; c <= lastCap; c++ {
		if data[c/32].Permitted&(1<<(c%32)) == 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, uintptr(c), 0, 0); err != nil {
			return fmt.Errorf("raise ambient capability %d: %w", c, err)
		}
	}
	return nil
}

// execProcess drops privileges and execs the process.
func execProcess(cfg childConfig, lastCap int) error {
	// Insecure keeps the whole bounding set, and any user keeps every
	// capability through the setuid (as ambient ones), as runc gives them.
	if !cfg.Insecure {
		if err := dropCapabilities(lastCap); err != nil {
			return err
		}
	}
	keep := cfg.Insecure && cfg.UID != 0
	if keep {
		if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("keep capabilities: %w", err)
		}
	}
	gids := make([]int, len(cfg.Sgids))
	for i, g := range cfg.Sgids {
		gids[i] = int(g)
	}
	if err := syscall.Setgroups(gids); err != nil {
		return fmt.Errorf("setgroups: %w", err)
	}
	if err := syscall.Setgid(int(cfg.GID)); err != nil {
		return fmt.Errorf("setgid %d: %w", cfg.GID, err)
	}
	if err := syscall.Setuid(int(cfg.UID)); err != nil {
		return fmt.Errorf("setuid %d: %w", cfg.UID, err)
	}
	if keep {
		if err := raiseAmbient(lastCap); err != nil {
			return err
		}
	}
	unix.Umask(0o022)
	if err := unix.Chdir(cfg.Cwd); err != nil {
		return fmt.Errorf("chdir to working directory %s: %w", cfg.Cwd, err)
	}
	argv0, err := lookPath(cfg.Args[0], cfg.Env)
	if err != nil {
		return err
	}
	err = unix.Exec(argv0, cfg.Args, cfg.Env)
	return fmt.Errorf("exec %s: %w", cfg.Args[0], err)
}

// lookPath finds name on the container's PATH (as runc does, after
// pivot_root), not kiln's.
func lookPath(name string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	var pathEnv string
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("exec: %q: executable file not found in $PATH", name)
}
