package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

const (
	// registryStartTimeout bounds how long one registry start may take; the
	// binary usually answers within 100ms, but CI machines can be loaded.
	registryStartTimeout = 20 * time.Second
	// registryAttempts covers the race between picking a free port and the
	// registry binding it: another process may take the port meanwhile.
	registryAttempts = 3
)

// errPortTaken reports that the registry could not bind its port, which is
// worth another attempt on a fresh port.
var errPortTaken = errors.New("registry port already in use")

// registryConfig is a minimal distribution 2.8 configuration: no auth, local
// storage, deletes allowed (cache tests prune), listening on loopback only.
const registryConfig = `version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
%s`

// Registry starts the real registry binary (docker-registry, CNCF
// distribution 2.8) on 127.0.0.1 with a free port and storage in a temporary
// directory, waits until GET /v2/ answers, and stops it in t.Cleanup.
// It returns "127.0.0.1:PORT". The registry's log is printed only if the test
// failed.
func Registry(t testing.TB) string {
	t.Helper()
	return RegistryWithConfig(t, "")
}

// RegistryWithConfig is Registry with extra top-level YAML appended to the
// registry's configuration (for example an `auth:` section).
func RegistryWithConfig(t testing.TB, extra string) string {
	t.Helper()
	bin := Need(t, "docker-registry")
	dir := t.TempDir()
	var lastErr error
	for attempt := 1; attempt <= registryAttempts; attempt++ {
		addr, err := startRegistry(t, bin, dir, extra, attempt)
		if err == nil {
			return addr
		}
		lastErr = err
		if !errors.Is(err, errPortTaken) {
			break
		}
	}
	t.Fatalf("testenv: start registry: %v", lastErr)
	return ""
}

// startRegistry makes one attempt. On success the process is owned by a
// t.Cleanup; on failure it has already been stopped.
func startRegistry(t testing.TB, bin, dir, extra string, attempt int) (string, error) {
	t.Helper()
	port, err := pickPort()
	if err != nil {
		return "", err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	storage := filepath.Join(dir, fmt.Sprintf("storage-%d", attempt))
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return "", fmt.Errorf("create registry storage: %w", err)
	}
	cfgPath := filepath.Join(dir, fmt.Sprintf("config-%d.yml", attempt))
	cfg := fmt.Sprintf(registryConfig, strconv.Quote(storage), addr, extra)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return "", fmt.Errorf("write registry config: %w", err)
	}
	logPath := filepath.Join(dir, fmt.Sprintf("registry-%d.log", attempt))
	logFile, err := os.Create(logPath)
	if err != nil {
		return "", fmt.Errorf("create registry log: %w", err)
	}

	cmd := exec.Command(bin, "serve", cfgPath)
	// A clean environment: REGISTRY_* variables from the host would
	// override the config file (distribution reads them as overrides).
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Own process group, so a terminal's Ctrl-C reaches the test binary
	// first and the registry is stopped by our cleanup, not orphaned mid-way.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return "", fmt.Errorf("start %s: %w", bin, err)
	}
	// exited is closed once the process is reaped; waitErr is valid then.
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()

	stop := func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(5 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		}
		logFile.Close()
	}

	if err := waitRegistry(t.Context(), addr, exited, &waitErr); err != nil {
		stop()
		log, _ := os.ReadFile(logPath)
		if bytes.Contains(log, []byte("address already in use")) {
			return "", fmt.Errorf("%s: %w", addr, errPortTaken)
		}
		return "", fmt.Errorf("%w\nregistry log:\n%s", err, log)
	}

	t.Cleanup(func() {
		stop()
		if t.Failed() {
			log, err := os.ReadFile(logPath)
			if err != nil {
				t.Logf("testenv: read registry log: %v", err)
				return
			}
			t.Logf("testenv: registry %s log:\n%s", addr, log)
		}
	})
	return addr, nil
}

// pickPort is freePort; tests replace it to provoke a port collision.
var pickPort = freePort

// freePort asks the kernel for a free loopback port. The port is released
// before the registry binds it, hence the retries in Registry.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitRegistry polls GET /v2/ until the registry answers, the process exits,
// or the start timeout passes.
func waitRegistry(ctx context.Context, addr string, exited <-chan struct{}, waitErr *error) error {
	ctx, cancel := context.WithTimeout(ctx, registryStartTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	url := "http://" + addr + "/v2/"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("ping registry: %w", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("registry exited before answering on %s: %v", addr, *waitErr)
		case <-ctx.Done():
			return fmt.Errorf("registry did not answer GET %s: %w", url, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Pull reads an image back from a registry started by Registry (plain HTTP).
// Layers are fetched lazily, while the test runs.
func Pull(t testing.TB, ref string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("testenv: Pull: parse %q: %v", ref, err)
	}
	img, err := remote.Image(r, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatalf("testenv: Pull %s: %v", ref, err)
	}
	return img
}
