package executor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/sys/user"

	"github.com/kiln-build/kiln/internal/mount"
)

// run is what both executors share for one Run: a work directory with the
// root filesystem mounted at rootfs (in kiln's own mount namespace, so the
// stubs can be removed through it whatever happens to the process), the
// resolved user, and the stubs to remove afterwards.
type run struct {
	dir        string // work directory; the runc bundle
	rootfs     string // dir/rootfs: Spec.Root mounted here
	mounted    bool
	hosts      string // generated /etc/hosts
	resolvConf string // host file bind-mounted at /etc/resolv.conf
	uid, gid   uint32
	sgids      []uint32
	env        []string
	cwd        string
	hostname   string
	stubs      []string // relative to rootfs, deepest first
}

// validate refuses a Spec before anything is mounted or created.
func validate(spec Spec) error {
	if len(spec.Args) == 0 {
		return fmt.Errorf("%w: no command", ErrInvalidSpec)
	}
	if len(spec.Root) == 0 {
		return fmt.Errorf("%w: no root mounts", ErrInvalidSpec)
	}
	switch spec.Network {
	case "", NetworkDefault, NetworkHost, NetworkNone:
	default:
		return fmt.Errorf("%w: unknown network mode %q", ErrInvalidSpec, spec.Network)
	}
	if spec.Cwd != "" && !path.IsAbs(spec.Cwd) {
		return fmt.Errorf("%w: working directory %q is not absolute", ErrInvalidSpec, spec.Cwd)
	}
	for _, m := range spec.Mounts {
		if !path.IsAbs(m.Destination) || path.Clean(m.Destination) == "/" {
			return fmt.Errorf("%w: mount destination %q must be an absolute path below /", ErrInvalidSpec, m.Destination)
		}
		switch m.Type {
		case "bind", "tmpfs", "overlay":
		default:
			return fmt.Errorf("%w: mount %s: unsupported type %q", ErrInvalidSpec, m.Destination, m.Type)
		}
	}
	return nil
}

// prepare mounts the root in a new work directory, records the mount stubs
// the run will need, resolves the user, creates the working directory and
// completes the environment. On error it has already cleaned up.
func prepare(workDir string, spec Spec) (_ *run, err error) {
	if err := validate(spec); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(workDir, "kiln-run-")
	if err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	r := &run{dir: dir, rootfs: filepath.Join(dir, "rootfs"), hostname: spec.Hostname, cwd: spec.Cwd}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.cleanup())
		}
	}()
	if r.hostname == "" {
		r.hostname = DefaultHostname
	}
	if r.cwd == "" {
		r.cwd = "/"
	}
	if err := os.Mkdir(r.rootfs, 0o700); err != nil {
		return nil, fmt.Errorf("create rootfs directory: %w", err)
	}
	if err := mount.All(spec.Root, r.rootfs); err != nil {
		return nil, fmt.Errorf("mount root: %w", err)
	}
	r.mounted = true

	r.hosts = filepath.Join(dir, "hosts")
	if err := os.WriteFile(r.hosts, []byte(hostsFile(r.hostname)), 0o644); err != nil {
		return nil, fmt.Errorf("write hosts file: %w", err)
	}
	r.resolvConf = "/etc/resolv.conf"
	if _, err := os.Stat(r.resolvConf); err != nil {
		// A host without resolv.conf still gets one, empty, like BuildKit's
		// fallback; the mount point must not depend on the host.
		r.resolvConf = filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(r.resolvConf, nil, 0o644); err != nil {
			return nil, fmt.Errorf("write resolv.conf: %w", err)
		}
	}

	dests := []string{"/proc", "/dev", "/sys", "/etc/resolv.conf", "/etc/hosts"}
	for _, m := range spec.Mounts {
		dests = append(dests, m.Destination)
	}
	if r.stubs, err = missingPaths(r.rootfs, dests); err != nil {
		return nil, err
	}

	var home string
	if r.uid, r.gid, r.sgids, home, err = resolveUser(r.rootfs, spec.User); err != nil {
		return nil, err
	}
	if err := makeCwd(r.rootfs, r.cwd, int(r.uid), int(r.gid)); err != nil {
		return nil, err
	}
	r.env = completeEnv(spec.Env, home)
	return r, nil
}

// missingPaths is BuildKit's MountStubsCleaner bookkeeping: for each
// destination, resolved inside root, the path and each parent that does not
// exist yet, i.e. what creating the mount point will create. Paths are
// returned relative to root, unique, deepest first.
func missingPaths(root string, dests []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, d := range dests {
		p, err := securejoin.SecureJoin(root, d)
		if err != nil {
			return nil, fmt.Errorf("resolve %s in root: %w", d, err)
		}
		for p != root && strings.HasPrefix(p, root+"/") {
			_, err := os.Lstat(p)
			if err == nil || !(errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) {
				break
			}
			rel, _ := filepath.Rel(root, p)
			if !seen[rel] {
				seen[rel] = true
				out = append(out, rel)
			}
			p = filepath.Dir(p)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		return strings.Count(out[i], "/") > strings.Count(out[j], "/")
	})
	return out, nil
}

// removeStubs removes the recorded stubs that are still empty, deepest
// first, and puts back the times of their parent directories so the diff
// shows no change there (moby/buildkit#3148). It goes through os.Root: the
// process may have replaced a parent with a symlink, which must not lead
// the removal outside the root.
func removeStubs(rootfs string, stubs []string) error {
	if len(stubs) == 0 {
		return nil
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("open root to remove mount stubs: %w", err)
	}
	defer root.Close()
	var errs []error
	for _, rel := range stubs {
		fi, err := root.Lstat(rel)
		if err != nil {
			continue // gone, or now unreachable inside the root
		}
		if fi.IsDir() {
			empty, err := dirEmpty(root, rel)
			if err != nil || !empty {
				continue
			}
		} else if fi.Size() != 0 {
			continue
		}
		parent := filepath.Dir(rel)
		pfi, perr := root.Stat(parent)
		if err := root.Remove(rel); err != nil {
			errs = append(errs, fmt.Errorf("remove mount stub /%s: %w", rel, err))
			continue
		}
		if perr == nil {
			mtime := pfi.ModTime()
			atime := mtime
			if st, ok := pfi.Sys().(*syscall.Stat_t); ok {
				atime = time.Unix(st.Atim.Sec, st.Atim.Nsec)
			}
			if err := root.Chtimes(parent, atime, mtime); err != nil {
				errs = append(errs, fmt.Errorf("restore times of /%s: %w", parent, err))
			}
		}
	}
	return errors.Join(errs...)
}

func dirEmpty(root *os.Root, rel string) (bool, error) {
	f, err := root.Open(rel)
	if err != nil {
		return false, err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if errors.Is(err, io.EOF) {
		return true, nil
	}
	return len(names) == 0, err
}

// cleanup removes stubs, unmounts everything under the work directory and
// removes it. It refuses to remove a directory that still has a mount
// under it: that would delete the snapshot's files.
func (r *run) cleanup() error {
	var errs []error
	if r.mounted {
		if err := removeStubs(r.rootfs, r.stubs); err != nil {
			errs = append(errs, err)
		}
	}
	if err := mount.UnmountAll(r.dir); err != nil {
		errs = append(errs, fmt.Errorf("unmount run directory: %w", err))
	}
	mps, err := mount.MountPointsUnder(r.dir)
	switch {
	case err != nil:
		errs = append(errs, err)
	case len(mps) > 0:
		errs = append(errs, fmt.Errorf("run directory %s still has mounts %v; not removing it", r.dir, mps))
	default:
		if err := os.RemoveAll(r.dir); err != nil {
			errs = append(errs, fmt.Errorf("remove run directory: %w", err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("clean up run: %w", errors.Join(errs...))
	}
	return nil
}

// resolveUser resolves spec against the container's /etc/passwd and
// /etc/group as BuildKit's oci.GetUser: "uid:gid" (numbers or "root") is
// taken as is, with no supplementary groups; anything else goes through
// moby/sys/user.GetExecUser (a numeric uid missing from passwd gets gid 0;
// supplementary groups come from /etc/group). home is the user's home from
// passwd, "/" when unknown, for HOME.
func resolveUser(rootfs, spec string) (uid, gid uint32, sgids []uint32, home string, err error) {
	passwd, _ := openInRoot(rootfs, "/etc/passwd")
	group, _ := openInRoot(rootfs, "/etc/group")
	defer func() {
		for _, f := range []*os.File{passwd, group} {
			if f != nil {
				f.Close()
			}
		}
	}()
	if spec == "" {
		spec = "0"
	}
	if u, g, ok := parseUIDGID(spec); ok {
		return u, g, nil, homeOf(passwd, int(u)), nil
	}
	// GetExecUser tells a missing file by a nil interface, not a nil *os.File.
	var pr, gr io.Reader
	if passwd != nil {
		pr = passwd
	}
	if group != nil {
		gr = group
	}
	eu, err := user.GetExecUser(spec, &user.ExecUser{Home: "/"}, pr, gr)
	if err != nil {
		return 0, 0, nil, "", fmt.Errorf("resolve user %q: %w", spec, err)
	}
	for _, g := range eu.Sgids {
		sgids = append(sgids, uint32(g))
	}
	return uint32(eu.Uid), uint32(eu.Gid), sgids, eu.Home, nil
}

// parseUIDGID is BuildKit's fast path: both parts given, each a number or
// "root".
func parseUIDGID(s string) (uid, gid uint32, ok bool) {
	u, g, found := strings.Cut(s, ":")
	if !found {
		return 0, 0, false
	}
	parse := func(s string) (uint32, bool) {
		if s == "root" {
			return 0, true
		}
		n, err := strconv.ParseUint(s, 10, 32)
		return uint32(n), err == nil
	}
	uid, ok1 := parse(u)
	gid, ok2 := parse(g)
	return uid, gid, ok1 && ok2
}

func homeOf(passwd *os.File, uid int) string {
	if passwd == nil {
		return "/"
	}
	users, err := user.ParsePasswdFilter(passwd, func(u user.User) bool { return u.Uid == uid })
	if err != nil || len(users) == 0 || users[0].Home == "" {
		return "/"
	}
	return users[0].Home
}

// openInRoot opens p with symlinks resolved inside root (fs.RootPath
// semantics, as BuildKit reads the container's passwd).
func openInRoot(root, p string) (*os.File, error) {
	full, err := securejoin.SecureJoin(root, p)
	if err != nil {
		return nil, err
	}
	return os.Open(full)
}

// makeCwd creates the working directory when missing, as BuildKit does
// before starting the container: mode 0755, each created directory owned by
// the process user. Existing directories are left alone.
func makeCwd(rootfs, cwd string, uid, gid int) error {
	full, err := securejoin.SecureJoin(rootfs, cwd)
	if err != nil {
		return fmt.Errorf("resolve working directory %s: %w", cwd, err)
	}
	rel, err := filepath.Rel(rootfs, full)
	if err != nil || rel == "." {
		return nil
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("open root: %w", err)
	}
	defer root.Close()
	var missing []string
	for p := rel; p != "." && p != "/"; p = filepath.Dir(p) {
		if _, err := root.Lstat(p); err == nil {
			break
		}
		missing = append(missing, p)
	}
	if len(missing) == 0 {
		return nil
	}
	if err := root.MkdirAll(rel, 0o755); err != nil {
		return fmt.Errorf("create working directory %s: %w", cwd, err)
	}
	for _, p := range missing {
		if err := root.Chmod(p, 0o755); err != nil {
			return fmt.Errorf("create working directory %s: %w", cwd, err)
		}
		if err := root.Lchown(p, uid, gid); err != nil {
			return fmt.Errorf("create working directory %s: %w", cwd, err)
		}
	}
	return nil
}

// completeEnv adds Docker's default PATH and the user's HOME when env has
// none (runc sets HOME the same way).
func completeEnv(env []string, home string) []string {
	out := append([]string(nil), env...)
	has := func(k string) bool {
		for _, e := range env {
			if strings.HasPrefix(e, k+"=") {
				return true
			}
		}
		return false
	}
	if !has("PATH") {
		out = append(out, DefaultPathEnv)
	}
	if !has("HOME") {
		out = append(out, "HOME="+home)
	}
	return out
}
