package executor

import (
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// defaultCaps is Docker's (and containerd's, and so BuildKit's) default
// capability set: the bounding set of every RUN process. A root process
// gets these as permitted and effective; any other user gets none after
// exec, exactly as under docker build.
var defaultCaps = []struct {
	name string
	num  int
}{
	{"CAP_CHOWN", unix.CAP_CHOWN},
	{"CAP_DAC_OVERRIDE", unix.CAP_DAC_OVERRIDE},
	{"CAP_FSETID", unix.CAP_FSETID},
	{"CAP_FOWNER", unix.CAP_FOWNER},
	{"CAP_MKNOD", unix.CAP_MKNOD},
	{"CAP_NET_RAW", unix.CAP_NET_RAW},
	{"CAP_SETGID", unix.CAP_SETGID},
	{"CAP_SETUID", unix.CAP_SETUID},
	{"CAP_SETFCAP", unix.CAP_SETFCAP},
	{"CAP_SETPCAP", unix.CAP_SETPCAP},
	{"CAP_NET_BIND_SERVICE", unix.CAP_NET_BIND_SERVICE},
	{"CAP_SYS_CHROOT", unix.CAP_SYS_CHROOT},
	{"CAP_KILL", unix.CAP_KILL},
	{"CAP_AUDIT_WRITE", unix.CAP_AUDIT_WRITE},
}

// capNames lists defaultCaps by name, as runtime-spec wants them.
func capNames() []string {
	out := make([]string, len(defaultCaps))
	for i, c := range defaultCaps {
		out[i] = c.name
	}
	return out
}

// allCaps names every capability, in the kernel's numbering.
var allCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
	"CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
	"CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
	"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
	"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
	"CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
	"CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
	"CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
	"CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
	"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// insecureCapNames is every capability kiln's process holds: BuildKit
// grants a security.insecure RUN its own set, and runc cannot give more.
func insecureCapNames() ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("capget: %w", err)
	}
	held := uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32
	var out []string
	for i, name := range allCaps {
		if held&(1<<i) != 0 {
			out = append(out, name)
		}
	}
	return out, nil
}

// insecureDevices are the device nodes BuildKit adds for
// security.insecure (util/entitlements/security): the kernel log, FUSE,
// CUSE, KVM, TUN and loop devices, so a privileged step can mount images
// or run a VM.
var insecureDevices = func() []specs.LinuxDevice {
	d := []specs.LinuxDevice{
		{Path: "/dev/kmsg", Type: "c", Major: 1, Minor: 11},
		{Path: "/dev/cuse", Type: "c", Major: 10, Minor: 203},
		{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229},
		{Path: "/dev/kvm", Type: "c", Major: 10, Minor: 232},
		{Path: "/dev/net/tun", Type: "c", Major: 10, Minor: 200},
		{Path: "/dev/loop-control", Type: "c", Major: 10, Minor: 237},
	}
	for i := range 8 {
		d = append(d, specs.LinuxDevice{Path: fmt.Sprintf("/dev/loop%d", i), Type: "b", Major: 7, Minor: int64(i)})
	}
	return d
}()

// maskedPaths and readonlyPaths are containerd's defaults (what runc gets
// from BuildKit): kernel files a build has no business reading or writing.
var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
		"/proc/sched_debug", "/proc/scsi", "/sys/firmware",
		"/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// systemMount is one of the default mounts every container gets, in the
// order they are made (the containerd default spec, minus /run as BuildKit
// removes it: moby/buildkit#429).
type systemMount struct {
	dest    string
	typ     string
	source  string
	options []string
}

var systemMounts = []systemMount{
	{"/proc", "proc", "proc", []string{"nosuid", "noexec", "nodev"}},
	{"/dev", "tmpfs", "tmpfs", []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
	{"/dev/pts", "devpts", "devpts", []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
	{"/dev/shm", "tmpfs", "shm", []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
	{"/dev/mqueue", "mqueue", "mqueue", []string{"nosuid", "noexec", "nodev"}},
	{"/sys", "sysfs", "sysfs", []string{"nosuid", "noexec", "nodev", "ro"}},
}

// devices are the character devices of the minimal /dev (runc's defaults).
var devices = []struct {
	name         string
	major, minor uint32
}{
	{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
	{"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
}

// devSymlinks are the /dev links processes expect (runc's defaults).
var devSymlinks = [][2]string{
	{"fd", "/proc/self/fd"},
	{"stdin", "/proc/self/fd/0"},
	{"stdout", "/proc/self/fd/1"},
	{"stderr", "/proc/self/fd/2"},
	{"ptmx", "pts/ptmx"},
	{"core", "/proc/kcore"},
}

// hostsFile is the /etc/hosts BuildKit generates (oci.GetHostsFile):
// localhost and the container's hostname, never the host's entries.
func hostsFile(hostname string) string {
	return fmt.Sprintf("127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost ip6-loopback\n", hostname)
}
