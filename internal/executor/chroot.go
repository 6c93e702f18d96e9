package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// childArg0 marks a process as the chroot executor's child: Init looks for
// it in os.Args[0]. Only the marker travels in argv; the spec (whose Env may
// hold secrets) goes over a pipe.
const childArg0 = "kiln-executor-chroot-child"

// Child file descriptors: the spec comes in on childConfigFD; a setup
// failure goes out on childErrorFD, which is close-on-exec, so the parent
// reads EOF exactly when the process was exec'd.
const (
	childConfigFD = 3
	childErrorFD  = 4
)

// childConfig is what the parent sends the child: everything resolved
// except mount points, which the child creates as it mounts, so a mount
// under an earlier one lands inside it.
type childConfig struct {
	Rootfs     string   `json:"rootfs"`
	Mounts     []Mount  `json:"mounts"`
	Hosts      string   `json:"hosts"`
	ResolvConf string   `json:"resolvConf"`
	Hostname   string   `json:"hostname"`
	NetNone    bool     `json:"netNone"`
	Args       []string `json:"args"`
	Env        []string `json:"env"`
	Cwd        string   `json:"cwd"`
	UID        uint32   `json:"uid"`
	GID        uint32   `json:"gid"`
	Sgids      []uint32 `json:"sgids"`
	Insecure   bool     `json:"insecure"`
}

type chrootExecutor struct{ cfg Config }

func (chrootExecutor) Name() string { return "chroot" }

// Run mounts the root in kiln's mount namespace, starts kiln's child in new
// namespaces (it inherits a copy of that mount, mounts the rest privately,
// pivot_roots and execs), waits, and removes stubs through the parent's
// mount. All mounts the child made die with its mount namespace.
func (e chrootExecutor) Run(ctx context.Context, spec Spec) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("chroot executor: %w", err)
	}
	r, err := prepare(e.cfg.Dir, spec)
	if err != nil {
		return fmt.Errorf("chroot executor: %w", err)
	}
	defer func() {
		if cerr := r.cleanup(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}()
	cfg, err := json.Marshal(childConfig{
		Rootfs: r.rootfs, Mounts: spec.Mounts, Hosts: r.hosts, ResolvConf: r.resolvConf,
		Hostname: r.hostname, NetNone: spec.Network == NetworkNone,
		Args: spec.Args, Env: r.env, Cwd: r.cwd, UID: r.uid, GID: r.gid, Sgids: r.sgids,
		Insecure: spec.Insecure,
	})
	if err != nil {
		return fmt.Errorf("chroot executor: encode child config: %w", err)
	}
	return runChild(ctx, cfg, spec)
}

func runChild(ctx context.Context, cfg []byte, spec Spec) error {
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("chroot executor: %w", err)
	}
	defer cfgW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		cfgR.Close()
		return fmt.Errorf("chroot executor: %w", err)
	}
	defer errR.Close()

	flags := unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC
	if spec.Network == NetworkNone {
		flags |= unix.CLONE_NEWNET
	}
	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{childArg0},
		Env:        []string{}, // the process's env travels in the config
		Stdout:     spec.Stdout,
		Stderr:     spec.Stderr,
		ExtraFiles: []*os.File{cfgR, errW},
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: uintptr(flags),
			// If kiln dies the build must not keep running unseen.
			Pdeathsig: syscall.SIGKILL,
		},
		// Output copying must not outlive a killed process forever.
		WaitDelay: cleanupTimeout,
	}
	// Pdeathsig fires when the thread that forked exits, not the process:
	// keep this goroutine on its thread until the child is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err = cmd.Start()
	cfgR.Close()
	errW.Close()
	if err != nil {
		return fmt.Errorf("chroot executor: start child: %w", err)
	}
	setupErr := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(errR)
		setupErr <- string(b)
	}()
	// The child reads the whole config before doing anything, so this
	// cannot block for long; an error means the child died, which Wait
	// reports.
	_, _ = cfgW.Write(cfg)
	cfgW.Close()

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(killGrace):
			// pid 1 of a pid namespace ignores SIGTERM unless it handles
			// it; SIGKILL of it kills every process in the namespace.
			_ = cmd.Process.Kill()
			<-done
		}
		return fmt.Errorf("chroot executor: run %s: %w", strings.Join(spec.Args, " "), ctx.Err())
	}
	if msg := <-setupErr; msg != "" {
		return fmt.Errorf("chroot executor: %s", msg)
	}
	return exitError(werr)
}

// exitError turns a Wait error into *ExitError where the process ran.
func exitError(err error) error {
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return &ExitError{Code: 128 + int(ws.Signal())}
		}
		return &ExitError{Code: ee.ExitCode()}
	}
	return fmt.Errorf("wait for process: %w", err)
}
