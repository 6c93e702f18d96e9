package executor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/mount"
	"github.com/kiln-build/kiln/internal/testenv"
)

// The conformance suite: every executor runs it with one line.
func TestChrootExecutor(t *testing.T) { testExecutor(t, "chroot") }
func TestRuncExecutor(t *testing.T)   { testExecutor(t, "runc") }

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("executor tests need root when CI=true")
	}
	t.Skip("executor tests need root")
}

func newExecutor(t *testing.T, name string) Executor {
	t.Helper()
	needRoot(t)
	if name == "runc" {
		testenv.Need(t, "runc")
	}
	ex, err := New(name, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if ex.Name() != name {
		t.Fatalf("Name() = %q, want %q", ex.Name(), name)
	}
	return ex
}

// runIn runs spec with root, with TMPDIR pointing at a fresh directory, and
// checks that the run left nothing there: no work directory, no mount.
func runIn(t *testing.T, ctx context.Context, ex Executor, root testRoot, spec Spec) (stdout, stderr string, err error) {
	t.Helper()
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	var o, e bytes.Buffer
	spec.Root = root.mounts
	spec.Stdout, spec.Stderr = &o, &e
	err = ex.Run(ctx, spec)
	mps, merr := mount.MountPointsUnder(tmp)
	if merr != nil || len(mps) > 0 {
		t.Errorf("mounts left under the run directory: %v %v", mps, merr)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("run left %d entries in TMPDIR (%s...)", len(ents), ents[0].Name())
	}
	return o.String(), e.String(), err
}

func sh(script string) []string { return []string{"/bin/sh", "-c", script} }

func testExecutor(t *testing.T, name string) {
	ex := newExecutor(t, name)
	ctx := context.Background()

	t.Run("exit codes", func(t *testing.T) {
		root := newTestRoot(t, rbindRoot)
		if _, _, err := runIn(t, ctx, ex, root, Spec{Args: sh("exit 0")}); err != nil {
			t.Fatalf("exit 0: %v", err)
		}
		_, _, err := runIn(t, ctx, ex, root, Spec{Args: sh("exit 3")})
		var ee *ExitError
		if !errors.As(err, &ee) || ee.Code != 3 {
			t.Fatalf("exit 3: got %v, want *ExitError{3}", err)
		}
		_, _, err = runIn(t, ctx, ex, root, Spec{Args: []string{"no-such-program"}})
		if err == nil {
			t.Fatal("missing program ran")
		}
	})

	t.Run("output env cwd", func(t *testing.T) {
		root := newTestRoot(t, rbindRoot)
		out, errOut, err := runIn(t, ctx, ex, root, Spec{
			Args: sh(`echo out; echo err >&2; echo "$FOO|$PATH|$HOME"; pwd; umask; stat -c %u:%g:%a /work/sub`),
			Env:  []string{"FOO=bar baz"},
			Cwd:  "/work/sub",
			User: "app",
		})
		if err != nil {
			t.Fatalf("%v: %s", err, errOut)
		}
		want := "out\nbar baz|" + strings.TrimPrefix(DefaultPathEnv, "PATH=") + "|/home/app\n/work/sub\n0022\n1000:1000:755\n"
		if out != want || errOut != "err\n" {
			t.Fatalf("stdout %q stderr %q, want %q and %q", out, errOut, want, "err\n")
		}
		if fi, err := os.Stat(filepath.Join(root.writes, "work/sub")); err != nil || !fi.IsDir() {
			t.Fatalf("working directory not kept in the root: %v", err)
		}
	})

	t.Run("users", func(t *testing.T) {
		root := newTestRoot(t, rbindRoot)
		for _, tc := range []struct{ user, want string }{
			{"", "0 0 0"},
			{"root", "0 0 0"},
			{"app", "1000 1000 1000 50"},
			{"1000", "1000 1000 1000 50"},
			{"1000:1000", "1000 1000 1000"}, // BuildKit's fast path: no groups looked up
			{"app:staff", "1000 50 50"},
			{"4242", "4242 0 0"}, // not in passwd: gid 0, as runc
		} {
			out, errOut, err := runIn(t, ctx, ex, root, Spec{Args: sh(`echo $(id -u) $(id -g) $(id -G)`), User: tc.user})
			if err != nil {
				t.Fatalf("user %q: %v: %s", tc.user, err, errOut)
			}
			if strings.TrimSpace(out) != tc.want {
				t.Errorf("user %q: id says %q, want %q", tc.user, strings.TrimSpace(out), tc.want)
			}
		}
		if _, _, err := runIn(t, ctx, ex, root, Spec{Args: sh("true"), User: "nosuchuser"}); err == nil {
			t.Error("unknown user name accepted")
		}
	})

	t.Run("capabilities", func(t *testing.T) {
		root := newTestRoot(t, rbindRoot)
		out, _, err := runIn(t, ctx, ex, root, Spec{Args: sh(`grep -E '^Cap(Eff|Bnd|Inh)' /proc/self/status`)})
		if err != nil {
			t.Fatal(err)
		}
		// Docker's default set: 0x a80425fb.
		for _, want := range []string{"CapInh:\t0000000000000000", "CapBnd:\t00000000a80425fb", "CapEff:\t00000000a80425fb"} {
			if !strings.Contains(out, want) {
				t.Errorf("capabilities %q lack %q", out, want)
			}
		}
		out, _, err = runIn(t, ctx, ex, root, Spec{Args: sh(`grep CapEff /proc/self/status`), User: "app"})
		if err != nil || !strings.Contains(out, "0000000000000000") {
			t.Errorf("non-root process has capabilities: %q %v", out, err)
		}
	})

	t.Run("insecure", func(t *testing.T) {
		// RUN --security=insecure: every capability the kernel has, the
		// kernel files unmasked, /sys writable; so a mount works.
		root := newTestRoot(t, rbindRoot)
		// What this (root) process holds, as BuildKit grants its own.
		status, err := os.ReadFile("/proc/self/status")
		if err != nil {
			t.Fatal(err)
		}
		_, all, _ := strings.Cut(string(status), "CapPrm:\t")
		all, _, _ = strings.Cut(all, "\n")
		out, errOut, err := runIn(t, ctx, ex, root, Spec{Insecure: true, Args: sh(`grep -E '^Cap(Eff|Bnd)' /proc/self/status && ` +
			`mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && umount /mnt/t && echo mounted && ` +
			`grep -q ' /sys sysfs rw,' /proc/mounts && echo sys-rw && ! grep -q ' /proc/kcore ' /proc/mounts && echo unmasked`)})
		if err != nil {
			t.Fatalf("%v: %s", err, errOut)
		}
		for _, want := range []string{"CapEff:\t" + all, "mounted", "sys-rw", "unmasked"} {
			if !strings.Contains(out, want) {
				t.Errorf("insecure RUN printed %q, lacking %q", out, want)
			}
		}
		// Any user keeps them, as runc's ambient set gives them.
		out, errOut, err = runIn(t, ctx, ex, root, Spec{Insecure: true, User: "app", Args: sh(`grep CapEff /proc/self/status`)})
		if err != nil || !strings.Contains(out, "CapEff:\t"+all) {
			t.Errorf("an insecure RUN as a user has %q (%v: %s), want CapEff %s", out, err, errOut, all)
		}
		// The same without it: no mount.
		if _, _, err := runIn(t, ctx, ex, root, Spec{Args: sh("mkdir -p /mnt/t && mount -t tmpfs none /mnt/t")}); err == nil {
			t.Error("a sandboxed RUN mounted a tmpfs")
		}
	})

	for _, kind := range []rootKind{rbindRoot, overlayRoot} {
		t.Run("writes persist "+string(kind), func(t *testing.T) {
			root := newTestRoot(t, kind)
			if _, errOut, err := runIn(t, ctx, ex, root, Spec{Args: sh("echo hi > /made && mkdir -p /a/b")}); err != nil {
				t.Fatalf("%v: %s", err, errOut)
			}
			if b, err := os.ReadFile(filepath.Join(root.writes, "made")); err != nil || string(b) != "hi\n" {
				t.Fatalf("file written by the process: %q %v", b, err)
			}
			assertNoStubs(t, root)
		})
	}

	t.Run("mounts", func(t *testing.T) {
		root := newTestRoot(t, rbindRoot)
		ro, rw, secretDir := t.TempDir(), t.TempDir(), t.TempDir()
		secret := filepath.Join(secretDir, "x")
		if err := os.WriteFile(secret, []byte("s3cret"), 0o400); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ro, "in"), []byte("ro-data"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, errOut, err := runIn(t, ctx, ex, root, Spec{
			Args: sh(`cat /mnt/ro/in; echo; if echo x > /mnt/ro/new 2>/dev/null; then echo ro-writable; fi
echo w > /mnt/rw/new; echo t > /mnt/tmp/f; grep -q ' /mnt/tmp tmpfs ' /proc/mounts && echo tmpfs
cat /run/secrets/x; echo; stat -c %a /run/secrets/x`),
			Mounts: []Mount{
				{Destination: "/mnt/ro", Type: "bind", Source: ro, Options: []string{"rbind", "ro"}},
				{Destination: "/mnt/rw", Type: "bind", Source: rw, Options: []string{"rbind"}},
				{Destination: "/mnt/tmp", Type: "tmpfs", Options: []string{"size=1m"}},
				{Destination: "/run/secrets/x", Type: "bind", Source: secret, Options: []string{"ro"}},
			},
		})
		if err != nil {
			t.Fatalf("%v: %s", err, errOut)
		}
		if want := "ro-data\ntmpfs\ns3cret\n400\n"; out != want {
			t.Fatalf("stdout %q, want %q", out, want)
		}
		if _, err := os.Stat(filepath.Join(ro, "new")); err == nil {
			t.Error("write through a read-only bind reached its source")
		}
		if b, err := os.ReadFile(filepath.Join(rw, "new")); err != nil || string(b) != "w\n" {
			t.Errorf("write through a read-write bind: %q %v", b, err)
		}
		if _, err := os.Stat(filepath.Join(root.writes, "mnt/tmp/f")); err == nil {
			t.Error("tmpfs write landed in the root")
		}
		assertNoStubs(t, root, "mnt", "run")
	})

	t.Run("hostname pid network", func(t *testing.T) {
		root := newTestRoot(t, rbindRoot)
		out, _, err := runIn(t, ctx, ex, root, Spec{Args: sh(`hostname; echo $$; grep -c : /proc/net/dev; grep -q '^127.0.0.1.*buildkitsandbox' /etc/hosts && echo hosts`), Network: NetworkNone})
		if err != nil {
			t.Fatal(err)
		}
		if want := "buildkitsandbox\n1\n1\nhosts\n"; out != want {
			t.Errorf("hostname, pid, interfaces: %q, want %q", out, want)
		}
		out, _, err = runIn(t, ctx, ex, root, Spec{Args: sh(`hostname; grep : /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort`), Hostname: "h1", Network: NetworkHost})
		if err != nil {
			t.Fatal(err)
		}
		host, err := os.ReadFile("/proc/net/dev")
		if err != nil {
			t.Fatal(err)
		}
		var ifs []string
		for _, l := range strings.Split(string(host), "\n") {
			if name, _, ok := strings.Cut(l, ":"); ok {
				ifs = append(ifs, strings.TrimSpace(name))
			}
		}
		if len(ifs) < 2 {
			t.Logf("host has only %v; host network check is weak here", ifs)
		}
		if !strings.HasPrefix(out, "h1\n") || strings.Count(out, "\n") != len(ifs)+1 {
			t.Errorf("host network: %q, host interfaces %v", out, ifs)
		}
	})

	if name == "runc" {
		// Every RUN's cgroup nests under one kiln group inside kiln's own:
		// a CI job's limits hold its RUNs, and parallel RUNs share one
		// group's CPU rather than taking a share each.
		t.Run("cgroup", func(t *testing.T) {
			own, err := os.ReadFile("/proc/self/cgroup")
			if err != nil {
				t.Fatal(err)
			}
			root := newTestRoot(t, rbindRoot)
			out, errOut, err := runIn(t, ctx, ex, root, Spec{Args: sh("cat /proc/self/cgroup")})
			if err != nil {
				t.Fatalf("%v: %s", err, errOut)
			}
			ownPath := map[string]string{}
			for _, l := range strings.Split(strings.TrimSpace(string(own)), "\n") {
				f := strings.SplitN(l, ":", 3)
				ownPath[f[1]] = f[2]
			}
			// runc puts a relative path under its own cgroup on v1, and
			// under that cgroup's parent on a v2-only host (the own one
			// holds processes, so it cannot delegate controllers).
			_, v2only := ownPath[""]
			v2only = v2only && len(ownPath) == 1
			checked := 0
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				f := strings.SplitN(l, ":", 3)
				var want string
				switch {
				case v2only && f[1] == "":
					want = path.Join(path.Dir(ownPath[""]), "kiln") + "/kiln-"
				case f[1] == "cpu" || f[1] == "cpu,cpuacct" || f[1] == "memory" || f[1] == "pids":
					want = path.Join(ownPath[f[1]], "kiln") + "/kiln-"
				default:
					continue
				}
				checked++
				if !strings.HasPrefix(f[2], want) {
					t.Errorf("RUN's %q cgroup is %s, want under %s", f[1], f[2], want)
				}
			}
			if checked == 0 {
				t.Errorf("no cgroup of the RUN's checked:\n%s", out)
			}
		})
	}

	t.Run("cancel", func(t *testing.T) {
		root := newTestRoot(t, rbindRoot)
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		marker := fmt.Sprintf("3%d", time.Now().UnixNano()%1000) // a sleep we can find
		_, _, err := runIn(t, cctx, ex, root, Spec{Args: []string{"sleep", marker}})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want one wrapping context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("cancel took %v", d)
		}
		if p := findProcess(t, "sleep\x00"+marker); p != "" {
			t.Errorf("process left running: %s", p)
		}
		assertNoStubs(t, root)
	})

	t.Run("symlinks stay inside the root", func(t *testing.T) {
		root := newTestRoot(t, rbindRoot)
		evil := fmt.Sprintf("/tmp/kiln-evil-%d", time.Now().UnixNano())
		t.Cleanup(func() { os.RemoveAll(evil) })
		if err := os.Symlink("/../../../.."+evil, filepath.Join(root.base, "etc/resolv.conf")); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/../../../.."+evil+"-dir", filepath.Join(root.base, "mnt")); err != nil {
			t.Fatal(err)
		}
		_, errOut, err := runIn(t, ctx, ex, root, Spec{
			Args:   sh("cat /etc/resolv.conf >/dev/null && echo x > /mnt/t/f"),
			Mounts: []Mount{{Destination: "/mnt/t", Type: "tmpfs"}},
		})
		if err != nil {
			t.Fatalf("%v: %s", err, errOut)
		}
		for _, p := range []string{evil, evil + "-dir"} {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("%s created outside the root", p)
			}
		}
		if _, err := os.Lstat(filepath.Join(root.base, "tmp")); err == nil {
			t.Error("stub for the symlink's target left in the root")
		}
	})
}

// assertNoStubs checks that nothing the executor created as a mount point
// is left in the root: the image had none of these paths.
func assertNoStubs(t *testing.T, root testRoot, extra ...string) {
	t.Helper()
	for _, p := range append([]string{"proc", "dev", "sys", "etc/resolv.conf", "etc/hosts"}, extra...) {
		if _, err := os.Lstat(filepath.Join(root.writes, p)); err == nil {
			t.Errorf("mount stub /%s left in the root", p)
		}
	}
}

// findProcess returns the pid of a process whose command line starts with
// prefix, or "".
func findProcess(t *testing.T, prefix string) string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(string(b), prefix) {
			return e.Name()
		}
	}
	return ""
}
