package archive

import (
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/ownership"
)

// maxLinks bounds symlink resolution, like the kernel's ELOOP limit.
const maxLinks = 255

// Root is an extraction root: a directory resolved inside it costs only
// the components it does not share with the previously resolved one, each
// one openat(2) relative to its parent's descriptor, so neither the depth
// of a path nor PATH_MAX matter. Symlinks met on the way are followed but
// scoped to the root: an absolute target starts at the root and ".." stops
// there, as filepath-securejoin (and a chroot) would have it.
//
// A Root is not safe for concurrent use. Call Close when done.
type Root struct {
	fd    int
	chain []level // open directories for the last resolved logical path
	cur   string  // that path, chain[i].end bytes long at level i
	// Mkdir says how missing directories are created.
	Mkdir MkdirOptions
}

// level is one resolved logical component.
type level struct {
	end  int // the logical path up to this component is cur[:end]
	fd   int
	phys string // resolved root-relative path ("" for the root)
	link bool   // reached through a symlink (here or above)
}

// MkdirOptions say how Root creates missing directories.
type MkdirOptions struct {
	Mode     uint32 // permission bits, applied despite the umask
	UID, GID int
	// Created, when set, is told the root-relative path of each directory
	// created.
	Created func(phys string)
}

// OpenRoot opens dir as an extraction root. Missing directories are made
// 0755 root-owned unless Mkdir is changed.
func OpenRoot(dir string) (*Root, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open extraction root %s: %w", dir, err)
	}
	return &Root{fd: fd, Mkdir: MkdirOptions{Mode: 0o755}}, nil
}

// Close closes every descriptor the root holds.
func (r *Root) Close() error {
	r.Forget(0)
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// FD is the root directory's descriptor.
func (r *Root) FD() int { return r.fd }

// Forget drops cached directories deeper than depth logical components.
// Callers that replace or remove an existing directory or symlink call
// Invalidate instead.
func (r *Root) Forget(depth int) {
	for len(r.chain) > depth {
		_ = unix.Close(r.chain[len(r.chain)-1].fd)
		r.chain = r.chain[:len(r.chain)-1]
	}
	r.cur = r.cur[:r.top().end]
}

// Invalidate is called after replacing or removing an existing entry in
// the directory at logical path dir: cached descriptors below it may now be
// stale, and so may any reached through a symlink. Descriptors returned
// before may be closed: resolve again.
func (r *Root) Invalidate(dir string) {
	for _, l := range r.chain {
		if l.link {
			r.Forget(0)
			return
		}
	}
	r.Forget(len(split(dir)))
}

// Dir returns a descriptor for the directory at the cleaned relative
// logical path p ("." or "" for the root; no ".." components, as Clean
// returns) and its resolved root-relative path.
// With create, missing directories are made (see MkdirOptions). The
// descriptor belongs to the Root and stays valid until the next call.
func (r *Root) Dir(p string, create bool) (fd int, phys string, err error) {
	if p == "." {
		p = ""
	}
	r.Forget(r.shared(p))
	rest := strings.TrimPrefix(p[len(r.cur):], "/")
	links := 0
	for _, c := range split(rest) {
		parent := r.top()
		fd, phys, viaLink, err := r.step(parent.fd, parent.phys, c, create, &links)
		if err != nil {
			return -1, "", fmt.Errorf("resolve /%s: %w", p, err)
		}
		if r.cur != "" {
			r.cur += "/"
		}
		r.cur += c
		r.chain = append(r.chain, level{end: len(r.cur), fd: fd, phys: phys, link: viaLink || parent.link})
	}
	t := r.top()
	return t.fd, t.phys, nil
}

// shared is how many cached levels p starts with: one comparison of the
// two paths, then a binary search of the levels' ends, so an entry deep in
// a tree costs its name's length, not its depth squared.
func (r *Root) shared(p string) int {
	n := 0
	for n < len(p) && n < len(r.cur) && p[n] == r.cur[n] {
		n++
	}
	// Levels ending at or before n whose end is a component boundary of p.
	return sort.Search(len(r.chain), func(i int) bool {
		e := r.chain[i].end
		return e > n || (e < len(p) && p[e] != '/')
	})
}

func (r *Root) top() level {
	if len(r.chain) == 0 {
		return level{fd: r.fd}
	}
	return r.chain[len(r.chain)-1]
}

// step opens directory name in parent (root-relative path pphys), following
// it inside the root if it is a symlink. The returned descriptor is new.
func (r *Root) step(parent int, pphys, name string, create bool, links *int) (int, string, bool, error) {
	phys := name // a clean component: no path.Join (and Clean) needed
	if pphys != "" {
		phys = pphys + "/" + name
	}
	for attempt := 0; ; attempt++ {
		fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			return fd, phys, false, nil
		}
		switch {
		case errors.Is(err, unix.ENOENT) && create && attempt == 0:
			if err := r.mkdir(parent, name, phys); err != nil {
				return -1, "", false, err
			}
			continue
		case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
			var st unix.Stat_t
			if serr := unix.Fstatat(parent, name, &st, unix.AT_SYMLINK_NOFOLLOW); serr != nil {
				return -1, "", false, fmt.Errorf("%s: %w", phys, serr)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFLNK {
				return -1, "", false, fmt.Errorf("%s: %w", phys, unix.ENOTDIR)
			}
			fd, phys, err := r.follow(parent, pphys, name, create, links)
			return fd, phys, true, err
		}
		return -1, "", false, fmt.Errorf("%s: %w", phys, err)
	}
}

// follow resolves the symlink name in parent as a directory, scoped to the
// root, walking the target from the root (absolute) or from the link's
// directory (relative) with ".." applied to the resolved path.
func (r *Root) follow(parent int, pphys, name string, create bool, links *int) (int, string, error) {
	*links++
	if *links > maxLinks {
		return -1, "", fmt.Errorf("%s: %w", path.Join(pphys, name), unix.ELOOP)
	}
	target, err := readlinkat(parent, name)
	if err != nil {
		return -1, "", fmt.Errorf("%s: %w", path.Join(pphys, name), err)
	}
	if !strings.HasPrefix(target, "/") {
		target = pphys + "/" + target
	}
	// Lexically, on the resolved path: "/.." is "/", the root's bound.
	comps := split(strings.TrimPrefix(path.Clean("/"+target), "/"))
	cur, curPhys := r.fd, ""
	for _, c := range comps {
		fd, phys, _, err := r.step(cur, curPhys, c, create, links)
		if cur != r.fd {
			_ = unix.Close(cur)
		}
		if err != nil {
			return -1, "", err
		}
		cur, curPhys = fd, phys
	}
	if cur == r.fd {
		// The link points at the root itself: a descriptor of its own.
		fd, err := unix.Dup(r.fd)
		if err != nil {
			return -1, "", err
		}
		unix.CloseOnExec(fd)
		return fd, "", nil
	}
	return cur, curPhys, nil
}

func (r *Root) mkdir(parent int, name, phys string) error {
	m := r.Mkdir
	if err := unix.Mkdirat(parent, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mkdir %s: %w", phys, err)
	}
	if err := ownership.Fchownat(parent, name, m.UID, m.GID); err != nil {
		return fmt.Errorf("chown %s: %w", phys, err)
	}
	// After chown, which clears setgid; mkdir is subject to the umask.
	if err := unix.Fchmodat(parent, name, m.Mode, 0); err != nil {
		return fmt.Errorf("chmod %s: %w", phys, err)
	}
	if m.Created != nil {
		m.Created(phys)
	}
	return nil
}

func readlinkat(dirfd int, name string) (string, error) {
	for n := 256; ; n *= 2 {
		buf := make([]byte, n)
		got, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if got < n {
			return string(buf[:got]), nil
		}
	}
}

// Readlink reads the symlink name in the directory dirfd.
func Readlink(dirfd int, name string) (string, error) { return readlinkat(dirfd, name) }
