package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// KilnPackage is the import path Kiln builds.
const KilnPackage = "github.com/kiln-build/kiln/cmd/kiln"

// binDirPrefix names the per-process directories holding built binaries in
// os.TempDir(); the suffix is the owning process id, so stale directories of
// finished test processes can be swept.
const binDirPrefix = "kiln-testenv-"

var kilnBuild struct {
	once sync.Once
	path string
	err  error
}

// Kiln builds ./cmd/kiln once per test process and returns the binary's
// path. If the build fails, every test that asks fails with the compiler
// output.
func Kiln(t testing.TB) string {
	t.Helper()
	goBin := Need(t, "go")
	kilnBuild.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			kilnBuild.err = err
			return
		}
		dir, err := binDir()
		if err != nil {
			kilnBuild.err = err
			return
		}
		out := filepath.Join(dir, "kiln")
		kilnBuild.err = goBuild(goBin, root, KilnPackage, out)
		kilnBuild.path = out
	})
	if kilnBuild.err != nil {
		t.Fatalf("testenv: Kiln: %v", kilnBuild.err)
	}
	return kilnBuild.path
}

// goBuild runs `go build -o out pkg` in the module at root and returns the
// compiler output in the error.
func goBuild(goBin, root, pkg, out string) error {
	cmd := exec.Command(goBin, "build", "-o", out, pkg)
	cmd.Dir = root
	output, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s in %s: %w\n%s", pkg, root, err, output)
	}
	return nil
}

// moduleRoot finds kiln's module root from this source file's location
// (two levels up), falling back to `go env GOMOD` when the binary was built
// with -trimpath and the location is not a real path.
func moduleRoot() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		root := filepath.Dir(filepath.Dir(filepath.Dir(file)))
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			return root, nil
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find module root: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("find module root: not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

var binDirOnce struct {
	once sync.Once
	dir  string
	err  error
}

// binDir returns this process's directory for built binaries. The binaries
// must outlive any single test, so t.TempDir does not fit; instead each call
// sweeps directories left by test processes that have exited.
func binDir() (string, error) {
	binDirOnce.once.Do(func() {
		sweepBinDirs()
		dir := filepath.Join(os.TempDir(), binDirPrefix+strconv.Itoa(os.Getpid()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			binDirOnce.err = fmt.Errorf("create binary directory: %w", err)
			return
		}
		binDirOnce.dir = dir
	})
	return binDirOnce.dir, binDirOnce.err
}

// sweepBinDirs removes binary directories of processes that no longer run.
func sweepBinDirs() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPrefix+"*"))
	for _, m := range matches {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(m), binDirPrefix))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(m)
		}
	}
}

// Result is what one kiln invocation produced.
type Result struct {
	Stdout, Stderr string
	// ExitCode is the process's exit status; -1 if it was killed by a signal.
	ExitCode int
}

// isolatedEnv are the variables Run points into a per-test home unless the
// caller sets them, so a test never reads or writes the developer's cache,
// config or registry credentials.
var isolatedEnv = []struct{ key, sub string }{
	{"HOME", ""},
	{"XDG_CACHE_HOME", ".cache"},
	{"XDG_CONFIG_HOME", ".config"},
	{"XDG_DATA_HOME", ".local/share"},
	{"XDG_STATE_HOME", ".local/state"},
	{"DOCKER_CONFIG", ".docker"},
}

// homes maps a test to its home directory, so every Run in one test shares
// the same cache (a second build in a test sees the first one's cache).
var homes sync.Map // testing.TB -> string

// Home returns the per-test home directory Run uses (created on first use).
// Tests can use it to inspect or wipe kiln's local cache between runs.
func Home(t testing.TB) string {
	t.Helper()
	if h, ok := homes.Load(t); ok {
		return h.(string)
	}
	h := t.TempDir()
	if actual, loaded := homes.LoadOrStore(t, h); loaded {
		return actual.(string)
	}
	t.Cleanup(func() { homes.Delete(t) })
	return h
}

// Run runs the kiln binary with args in dir. env is added to os.Environ()
// (later entries win); HOME, XDG_*_HOME and DOCKER_CONFIG point into a
// per-test home (see Home) unless env sets them. A non-zero exit does not
// fail the test: the caller asserts on Result.
func Run(t testing.TB, dir string, env []string, args ...string) Result {
	t.Helper()
	return run(t, Kiln(t), dir, env, args...)
}

func run(t testing.TB, bin, dir string, env []string, args ...string) Result {
	t.Helper()
	set := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		set[k] = true
	}
	full := os.Environ()
	home := Home(t)
	for _, v := range isolatedEnv {
		if !set[v.key] {
			full = append(full, v.key+"="+filepath.Join(home, v.sub))
		}
	}
	full = append(full, env...)

	cmd := exec.CommandContext(t.Context(), bin, args...)
	cmd.Dir = dir
	// exec.Cmd keeps the last value of a duplicated key.
	cmd.Env = full
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitCode()
	default:
		t.Fatalf("testenv: run %s %q: %v", bin, args, err)
	}
	t.Logf("testenv: %s %s (in %s): exit %d\nstderr:\n%s", filepath.Base(bin), strings.Join(args, " "), dir, res.ExitCode, res.Stderr)
	return res
}
