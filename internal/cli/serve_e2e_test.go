package cli_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"golang.org/x/crypto/bcrypt"

	"github.com/kiln-build/kiln/internal/testenv"
)

// served is a running `kiln cache serve` process.
type served struct {
	cmd  *exec.Cmd
	addr string // "127.0.0.1:PORT"
	mu   sync.Mutex
	log  bytes.Buffer
	msgs chan string // the "msg" of every log line, in order
	done chan error
}

// startServe starts `kiln cache serve` on a free loopback port over root,
// waits until it listens, and stops it (SIGTERM) in t.Cleanup. Its log is
// printed if the test failed.
func startServe(t *testing.T, root string, args ...string) *served {
	t.Helper()
	return startServeEnv(t, nil, append([]string{"--root", root}, args...)...)
}

// startServeEnv is startServe with env added to the server's environment
// and the store given in args.
func startServeEnv(t *testing.T, env []string, args ...string) *served {
	t.Helper()
	s := &served{msgs: make(chan string, 10000), done: make(chan error, 1)}
	args = append([]string{"cache", "serve", "--addr", "127.0.0.1:0"}, args...)
	s.cmd = exec.Command(testenv.Kiln(t), args...)
	s.cmd.Env = append([]string{"HOME=" + t.TempDir()}, env...)
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.mu.Lock()
			s.log.Write(sc.Bytes())
			s.log.WriteByte('\n')
			s.mu.Unlock()
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil {
				if line.Msg == "listening" {
					listening <- line.Addr
				}
				s.msgs <- line.Msg
			}
		}
		s.done <- s.cmd.Wait()
		close(s.msgs)
	}()
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			_ = s.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(30 * time.Second):
				_ = s.cmd.Process.Kill()
			}
		}
		if t.Failed() {
			t.Logf("kiln cache serve log:\n%s", s.logs())
		}
	})
	select {
	case s.addr = <-listening:
	case err := <-s.done:
		t.Fatalf("kiln cache serve exited before listening: %v\n%s", err, s.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("kiln cache serve did not listen within 30s:\n%s", s.logs())
	}
	return s
}

func (s *served) logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// waitMsg waits for a log line with msg.
func (s *served) waitMsg(t *testing.T, msg string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				t.Fatalf("kiln cache serve exited before logging %q", msg)
			}
			if m == msg {
				return
			}
		case <-timeout:
			t.Fatalf("kiln cache serve did not log %q within 30s", msg)
		}
	}
}

// The job `kiln cache serve` exists for: runner 1 pushes its image and a
// mode=max cache to it, and a brand-new runner 2 with --cache-from finds
// every step there and downloads no layer.
func TestCacheServeFreshRunner(t *testing.T) {
	testenv.Need(t, "runc")
	srv := startServe(t, t.TempDir())
	reg := srv.addr
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	p := newProxy(t, reg)
	src := writeContext(t, cacheFiles)
	cacheRef := p.host + "/cache/app:buildcache"
	baseArg := "BASE=" + strings.Replace(base, reg, p.host, 1)

	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", p.host+"/app:1", "--build-arg", baseArg,
		"--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")
	first := testenv.Pull(t, reg+"/app:1")
	firstDigest, _ := first.Digest()

	p.reset()
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	report := filepath.Join(t.TempDir(), "report.json")
	res := kiln(t, dir, env, "build", "--progress=plain", "--push", "-t", p.host+"/app:2", "--build-arg", baseArg,
		"--cache-from", "type=registry,ref="+cacheRef, "--report", report, ".")
	second := testenv.Pull(t, reg+"/app:2")
	secondDigest, _ := second.Digest()
	if firstDigest != secondDigest {
		t.Errorf("image digest changed on a fully cached build: %s then %s", firstDigest, secondDigest)
	}
	r := readReport(t, report)
	if r.Totals.Steps != 8 || r.Totals.Cached != 8 {
		t.Errorf("%d of %d steps cached, want all 8:\n%s", r.Totals.Cached, r.Totals.Steps, res.Stderr)
	}
	if n, b := p.downloaded(layerDigests(t, second)); n != 0 {
		t.Errorf("a fully cached build downloaded %d layer blobs (%d bytes) from kiln cache serve", n, b)
	}
	// The access log saw the builds' requests.
	if !strings.Contains(srv.logs(), `"path":"/v2/cache/app/manifests/buildcache"`) {
		t.Errorf("no access log line for the cache manifest")
	}
}

// A listener on every interface with no auth is refused unless asked for.
func TestCacheServeRefusesExposedWithoutAuth(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0"} {
		res := testenv.Run(t, t.TempDir(), nil, "cache", "serve", "--addr", addr, "--root", t.TempDir())
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, "--insecure-no-auth") {
			t.Errorf("--addr %s with no auth: exit %d, stderr %q; want a refusal naming --insecure-no-auth", addr, res.ExitCode, res.Stderr)
		}
	}
}

// A mistyped --access fails at start with what was wrong, never leaving
// the user it meant with every repository.
func TestCacheServeAccessErrors(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for want, args := range map[string][]string{
		"want ro:PREFIX or rw:PREFIX":     {"--htpasswd", htpasswd, "--access", "ci=wo:team-a/"},
		`user "ci" given twice`:           {"--htpasswd", htpasswd, "--access", "ci=rw:team-a/", "--access", "ci=ro:base/"},
		`"eve" is not a user in`:          {"--htpasswd", htpasswd, "--access", "eve=rw:team-a/"},
		"--access needs --htpasswd":       {"--access", "ci=rw:team-a/"},
		"is not a repository name prefix": {"--htpasswd", htpasswd, "--access", "ci=rw:Team-A/"},
	} {
		res := testenv.Run(t, t.TempDir(), nil, append([]string{"cache", "serve", "--addr", "127.0.0.1:0", "--root", t.TempDir()}, args...)...)
		if res.ExitCode == 0 || !strings.Contains(res.Stderr, want) {
			t.Errorf("%v: exit %d, stderr %q; want an error saying %q", args, res.ExitCode, res.Stderr, want)
		}
	}
}

// SIGTERM during an upload lets the upload finish and be stored before the
// server exits; a new connection is no longer accepted meanwhile.
func TestCacheServeShutdownFinishesUploads(t *testing.T) {
	root := t.TempDir()
	srv := startServe(t, root)
	blob := bytes.Repeat([]byte("kiln cache serve "), 64<<10)
	sum := sha256.Sum256(blob)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	resp, err := http.Post("http://"+srv.addr+"/v2/up/load/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start upload: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "http") {
		loc = "http://" + srv.addr + loc
	}
	pr, pw := io.Pipe()
	req, _ := http.NewRequest(http.MethodPut, loc+"&digest="+digest, pr)
	req.ContentLength = int64(len(blob))
	req.Header.Set("Content-Type", "application/octet-stream")
	putDone := make(chan *http.Response, 1)
	putErr := make(chan error, 1)
	go func() {
		// A connection of its own: the POST's idle one is closed by the
		// shutdown, as it should be.
		r, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			putErr <- err
			return
		}
		putDone <- r
	}()
	half := len(blob) / 2
	if _, err := pw.Write(blob[:half]); err != nil {
		t.Fatal(err)
	}
	// The signal must come while the server is writing the upload: wait
	// until its bytes reach the store's upload file.
	waitFor(t, "upload bytes in the store", func() bool {
		m, _ := filepath.Glob(filepath.Join(root, "docker/registry/v2/repositories/up/load/_uploads/*/data"))
		for _, f := range m {
			if fi, err := os.Stat(f); err == nil && fi.Size() > 0 {
				return true
			}
		}
		return false
	})
	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	srv.waitMsg(t, "shutting down: finishing in-flight requests")
	if _, err := pw.Write(blob[half:]); err != nil {
		t.Fatalf("the server dropped an in-flight upload on SIGTERM: %v", err)
	}
	pw.Close()
	select {
	case r := <-putDone:
		r.Body.Close()
		if r.StatusCode != http.StatusCreated {
			t.Fatalf("in-flight upload after SIGTERM: %s, want 201 Created", r.Status)
		}
	case err := <-putErr:
		t.Fatalf("in-flight upload after SIGTERM: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("in-flight upload did not finish within 30s of SIGTERM")
	}
	select {
	case err := <-srv.done:
		if err != nil {
			t.Fatalf("kiln cache serve after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("kiln cache serve did not exit within 30s of SIGTERM")
	}

	// Restarted on the same store, it serves the blob whole.
	srv = startServe(t, root)
	got, err := http.Get(fmt.Sprintf("http://%s/v2/up/load/blobs/%s", srv.addr, digest))
	if err != nil {
		t.Fatal(err)
	}
	defer got.Body.Close()
	b, _ := io.ReadAll(got.Body)
	if got.StatusCode != http.StatusOK || !bytes.Equal(b, blob) {
		t.Fatalf("blob uploaded during shutdown, after restart: %s, %d bytes, want %d", got.Status, len(b), len(blob))
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// GET /healthz answers while the store is reachable.
func TestCacheServeHealth(t *testing.T) {
	srv := startServe(t, t.TempDir())
	resp, err := http.Get("http://" + srv.addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz: %s", resp.Status)
	}
}

// kill -9 of the server in the middle of pushes, then a restart on the same
// store: every tag it lists pulls completely and verifies, and the pushes
// that were cut off succeed when retried.
func TestCacheServeKill9DuringPushes(t *testing.T) {
	root := t.TempDir()
	srv := startServe(t, root)
	const n, workers = 16, 4
	imgs := make([]v1.Image, n)
	for i := range imgs {
		img, err := random.Image(1<<20, 3)
		if err != nil {
			t.Fatal(err)
		}
		imgs[i] = img
	}
	refs := func(addr string) []name.Reference {
		out := make([]name.Reference, n)
		for i := range out {
			out[i], _ = name.ParseReference(fmt.Sprintf("%s/kill/app%d:v1", addr, i))
		}
		return out
	}
	var wg sync.WaitGroup
	all := refs(srv.addr)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if remote.Write(all[i], imgs[i]) != nil {
					return // the server is gone
				}
			}
		}()
	}
	// Kill once some images are complete, with the others under way.
	waitFor(t, "two complete pushes", func() bool {
		m, _ := filepath.Glob(filepath.Join(root, "docker/registry/v2/repositories/kill/*/_manifests/tags/v1/current/link"))
		return len(m) >= 2
	})
	if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-srv.done
	wg.Wait()

	srv = startServe(t, root)
	pulled := 0
	for i, ref := range refs(srv.addr) {
		img, err := remote.Image(ref)
		var terr *transport.Error
		if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
			continue // cut off before its manifest: invisible, as it should be
		}
		if err != nil {
			t.Errorf("%s after kill -9: %v", ref, err)
			continue
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("%s after kill -9 does not pull whole: %v", ref, err)
		}
		want, _ := imgs[i].Digest()
		if got, _ := img.Digest(); got != want {
			t.Errorf("%s after kill -9: digest %s, pushed %s", ref, got, want)
		}
		pulled++
	}
	for i, ref := range refs(srv.addr) {
		if err := remote.Write(ref, imgs[i]); err != nil {
			t.Errorf("push %s again after kill -9: %v", ref, err)
			continue
		}
		img, err := remote.Image(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("%s pushed again after kill -9: %v", ref, err)
		}
	}
	t.Logf("%d of %d images were complete at the kill", pulled, n)
}

// kiln version names the commit the go command recorded in the binary,
// exactly as `go version -m` reads it.
func TestVersionMatchesBuildInfo(t *testing.T) {
	bin := testenv.Kiln(t)
	out, err := exec.Command(testenv.Need(t, "go"), "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	res := kiln(t, t.TempDir(), nil, "version")
	rev := ""
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "build\tvcs.revision="); ok {
			rev = v
		}
	}
	got := strings.TrimSpace(res.Stdout)
	if rev == "" {
		if got != "kiln dev" {
			t.Errorf("kiln version with no VCS info recorded: %q, want \"kiln dev\"", got)
		}
		return
	}
	if !strings.Contains(got, "commit "+rev) {
		t.Errorf("kiln version: %q, want the recorded commit %s", got, rev)
	}
}
