package executor

import (
	"fmt"

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
