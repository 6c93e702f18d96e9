package archive

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

var userNS = sync.OnceValue(func() bool {
	// Outside a user namespace the whole uid range maps to itself.
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return false
	}
	f := bytes.Fields(b)
	return !(len(f) == 3 && string(f[0]) == "0" && string(f[1]) == "0" && string(f[2]) == "4294967295")
})

// InUserNS reports whether kiln runs in a user namespace, where the kernel
// refuses to create device nodes.
func InUserNS() bool { return userNS() }

// SkipDevice reports whether a character or block device entry is left
// out: in a user namespace, as containerd's archive.Apply and BuildKit do
// ("not supported in rootless"), and likewise when kiln is not root, where
// the kernel refuses them for the same reason. As root devices are created
// and a failure is an error; FIFOs are always created.
func SkipDevice(h *tar.Header) bool {
	return (h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock) && (os.Geteuid() != 0 || InUserNS())
}

// Mknodat creates the device node or FIFO of h as name in dir, with the
// permission bits of perm.
func Mknodat(dir int, name string, h *tar.Header, perm uint32) error {
	typ := uint32(unix.S_IFIFO)
	switch h.Typeflag {
	case tar.TypeChar:
		typ = unix.S_IFCHR
	case tar.TypeBlock:
		typ = unix.S_IFBLK
	}
	dev := unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
	if err := unix.Mknodat(dir, name, typ|perm, int(dev)); err != nil {
		return fmt.Errorf("mknod: %w", err)
	}
	return nil
}
