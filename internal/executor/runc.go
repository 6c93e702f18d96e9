package executor

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

type runcExecutor struct {
	runc string // path of the runc binary
	cfg  Config
}

func (*runcExecutor) Name() string { return "runc" }

// Run writes an OCI bundle around the mounted root and runs `runc run` with
// a state directory of its own, then deletes the container, removes stubs,
// unmounts and removes the bundle.
func (e *runcExecutor) Run(ctx context.Context, spec Spec) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("runc executor: %w", err)
	}
	r, err := prepare(e.cfg.Dir, spec)
	if err != nil {
		return fmt.Errorf("runc executor: %w", err)
	}
	defer func() {
		if cerr := r.cleanup(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	var idb [8]byte
	_, _ = rand.Read(idb[:])
	c := runcContainer{
		runc:  e.runc,
		state: e.cfg.RuncRoot,
		log:   filepath.Join(r.dir, "runc.log"),
		id:    "kiln-" + hex.EncodeToString(idb[:]),
	}
	var insecureCaps []string
	if spec.Insecure {
		if insecureCaps, err = insecureCapNames(); err != nil {
			return fmt.Errorf("runc executor: %w", err)
		}
	}
	cfg, err := json.Marshal(ociSpec(r, spec, c.id, insecureCaps))
	if err != nil {
		return fmt.Errorf("runc executor: encode config.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(r.dir, "config.json"), cfg, 0o600); err != nil {
		return fmt.Errorf("runc executor: write config.json: %w", err)
	}
	if c.state == "" {
		c.state = filepath.Join(r.dir, "state")
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if derr := c.delete(cctx); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	return c.run(ctx, r.dir, spec)
}

// runcContainer is one container under a private runc state root.
type runcContainer struct {
	runc, state, log, id string
}

func (c runcContainer) command(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, c.runc, append([]string{"--root", c.state, "--log", c.log, "--log-format", "json"}, args...)...)
}

func (c runcContainer) run(ctx context.Context, bundle string, spec Spec) error {
	cmd := exec.Command(c.runc, "--root", c.state, "--log", c.log, "--log-format", "json",
		"run", "--bundle", bundle, c.id)
	cmd.Stdout, cmd.Stderr = spec.Stdout, spec.Stderr
	// Own process group: a ^C meant for kiln reaches runc only through ctx.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = cleanupTimeout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("runc executor: start runc: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case werr := <-done:
		if werr != nil {
			if msg := c.logErrors(); msg != "" {
				return fmt.Errorf("runc executor: runc run: %s", msg)
			}
		}
		return exitError(werr)
	case <-ctx.Done():
	}
	// runc run forwards signals to the container's init.
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(killGrace):
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		_ = c.command(kctx, "kill", c.id, "KILL").Run()
		cancel()
		select {
		case <-done:
		case <-time.After(cleanupTimeout):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	return fmt.Errorf("runc executor: run %s: %w", strings.Join(spec.Args, " "), ctx.Err())
}

func (c runcContainer) delete(ctx context.Context) error {
	out, err := c.command(ctx, "delete", "--force", c.id).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "does not exist") {
		return fmt.Errorf("runc delete %s: %w: %s", c.id, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// logErrors returns the error messages runc logged: runc failing to set up
// the container exits 1 just like a process that exits 1, and the log is
// what tells the two apart.
func (c runcContainer) logErrors() string {
	f, err := os.Open(c.log)
	if err != nil {
		return ""
	}
	defer f.Close()
	var msgs []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) == nil && (entry.Level == "error" || entry.Level == "fatal") {
			msgs = append(msgs, entry.Msg)
		}
	}
	return strings.Join(msgs, "; ")
}

// writable is mount options without "ro".
func writable(opts []string) []string {
	out := make([]string, 0, len(opts))
	for _, o := range opts {
		if o != "ro" {
			out = append(out, o)
		}
	}
	return out
}

// ociSpec is the runtime-spec config: BuildKit's (containerd's default
// spec without /run, with resolv.conf and hosts, new privileges allowed, no
// rlimits) minus seccomp and the cgroup mount.
//
// Container id's cgroup is kiln/id, relative, which runc places under
// kiln's own cgroup (cgroup v1; under its parent on v2): every RUN of every
// kiln on the host then shares one group, as BuildKit's share buildkit/,
// and stays inside the limits of the CI job that started kiln. Without a
// path runc made each container a cgroup of its own beside the job's, so
// N parallel RUNs took N shares of the host's CPU.
func ociSpec(r *run, spec Spec, id string, insecureCaps []string) *specs.Spec {
	caps := capNames()
	umask := uint32(0o022)
	s := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			Args: spec.Args,
			Env:  r.env,
			Cwd:  r.cwd,
			User: specs.User{UID: r.uid, GID: r.gid, AdditionalGids: r.sgids, Umask: &umask},
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
		},
		Root:     &specs.Root{Path: r.rootfs},
		Hostname: r.hostname,
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace},
			},
			CgroupsPath:   "kiln/" + id,
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
		},
	}
	if spec.Network == NetworkNone {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}
	if spec.Insecure {
		c := insecureCaps
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: c, Effective: c, Permitted: c, Inheritable: c, Ambient: c}
		s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil
		s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Type: "c", Access: "rwm"}, {Allow: true, Type: "b", Access: "rwm"}}
		s.Linux.Devices = insecureDevices
	}
	for _, m := range systemMounts {
		opts := m.options
		if spec.Insecure && m.dest == "/sys" {
			opts = writable(opts)
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.dest, Type: m.typ, Source: m.source, Options: opts})
	}
	for _, b := range [][2]string{{r.resolvConf, "/etc/resolv.conf"}, {r.hosts, "/etc/hosts"}} {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: b[1], Type: "bind", Source: b[0], Options: []string{"rbind", "ro", "nosuid", "nodev"}})
	}
	for _, m := range spec.Mounts {
		mm := toMount(m)
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Destination, Type: m.Type, Source: mm.Source, Options: mm.Options})
	}
	return s
}

// RemoveContainers deletes every container under the runc state root
// root (a dead kiln's, found by a sweep), killing its processes: runc
// delete --force sends SIGKILL to the container's init, and the pid
// namespace takes every other process with it. A missing root is nothing
// to do.
func RemoveContainers(ctx context.Context, root string) error {
	des, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list runc containers: %w", err)
	}
	if len(des) == 0 {
		return nil
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return fmt.Errorf("%d runc containers left under %s: %w", len(des), root, ErrRuncNotFound)
	}
	var errs []error
	for _, de := range des {
		if !de.IsDir() {
			continue
		}
		c := runcContainer{runc: runc, state: root, log: os.DevNull, id: de.Name()}
		if err := c.delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
