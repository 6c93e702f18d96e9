package cli_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// killDockerfile: a RUN that reads a file and an env secret, sleeps and
// writes a few MB (so kills land while it runs and while its layer is
// written), a second RUN, and a COPY. N makes every build miss. Builds
// meant to be killed during RUN sleep long, so a RUN that outlives kiln
// is still running when the test looks for it.
const killDockerfile = `FROM BASE
ARG N
ARG SLEEP=0.4
RUN --mount=type=secret,id=tok --mount=type=secret,id=etok,env=ETOK echo kiln-kill-marker-$N-start && test -s /run/secrets/tok && test -n "$ETOK" && sleep $SLEEP && head -c 4000000 /dev/urandom > /big && echo kiln-kill-marker-$N-wrote
RUN echo kiln-kill-marker-$N-second && head -c 1000000 /dev/urandom > /big2 && sleep 0.2 && echo kiln-kill-marker-$N-wrote2
COPY f /f
`

// Kill phases, as read from the build's plain progress output.
const (
	phaseRun    = "RUN"
	phaseLayer  = "layer write"
	phasePush   = "push"
	phaseCache  = "cache export"
	phaseRandom = "random"
	phaseOutput = "output"
)

// TestKillNine kills kiln with SIGKILL at seeded random moments in every
// phase of builds that use secrets, both executors, a pushed image and
// local and registry cache exports; then one kiln command must leave no
// trace of the dead builds (mounts, processes, temp dirs, partial files,
// secret bytes), and a rebuild must be correct.
// KILN_KILL_SEED picks the moments; the seed is logged.
func TestKillNine(t *testing.T) {
	testenv.Need(t, "runc")
	if os.Getuid() != 0 {
		t.Skip("RUN needs root")
	}
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KILN_KILL_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("KILN_KILL_SEED=%q: %v", s, err)
		}
	}
	t.Logf("KILN_KILL_SEED=%d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 0x6b696c6e))

	home := testenv.Home(t)
	tmp := t.TempDir()
	dest := t.TempDir()
	secretDir := t.TempDir() // the secret's source: the one place it may be
	fileSecret, envSecret := "KILNFILESECRET"+randHex(t), "KILNENVSECRET"+randHex(t)
	secretFile := filepath.Join(secretDir, "tok")
	if err := os.WriteFile(secretFile, []byte(fileSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	// The marker names this test run's processes (another run may share
	// the machine).
	marker := "kiln-kill-" + randHex(t)
	ctxDir := writeContext(t, map[string]string{
		"Dockerfile": strings.NewReplacer("BASE", base, "kiln-kill-marker", marker).Replace(killDockerfile),
		"f":          "context file\n",
	})
	env := []string{"TMPDIR=" + tmp, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache"), "KILN_TEST_ETOK=" + envSecret}
	args := func(n int, iso string) []string {
		return append([]string{}, "build", "--progress=plain", "--isolation", iso, "--build-arg", "N="+strconv.Itoa(n),
			"--secret", "id=tok,src="+secretFile, "--secret", "id=etok,env=KILN_TEST_ETOK",
			"--cache-to", "type=local,dest="+dest, "--cache-to", "type=registry,ref="+host+"/killcache:c",
			"--push", "-t", host+"/kill:"+strconv.Itoa(n), ".")
	}
	dirs := []string{home, tmp, dest}

	start := time.Now()
	calib := kiln(t, ctxDir, env, args(0, "runc")...)
	full := time.Since(start)
	digest0 := imageDigest(t, calib.Stdout)
	t.Logf("a whole build takes %v", full)

	phases := []string{phaseRun, phaseLayer, phasePush, phaseCache, phaseRun, phaseLayer, phasePush, phaseCache, phaseRandom}
	landed := map[string]int{}
	kills := 0
	missing := func() []string {
		var m []string
		for _, p := range []string{phaseRun, phaseLayer, phasePush, phaseCache} {
			if landed[p] == 0 {
				m = append(m, p)
			}
		}
		return m
	}
	for i := 1; (kills < 20 || len(missing()) > 0) && i <= 44; i++ {
		iso := []string{"chroot", "runc"}[i%2]
		want := phases[i%len(phases)]
		if m := missing(); kills >= 16 && len(m) > 0 {
			want = m[i%len(m)] // aim at what the kills so far missed
		}
		a := args(i, iso)
		if want == phaseRun {
			a = append(a[:len(a)-1], "--build-arg", "SLEEP=120", ".")
		}
		got, killed := killDuring(t, ctxDir, env, a, marker, i, want, rng, full)
		if !killed {
			t.Logf("build %d (%s, aiming at %s) finished before the kill", i, iso, want)
			continue
		}
		kills++
		landed[got]++
		t.Logf("build %d (%s): SIGKILL during %s", i, iso, got)
	}
	t.Logf("%d kills in %v; phases: %v", kills, time.Since(start), landed)
	if kills < 20 {
		t.Errorf("only %d kills landed", kills)
	}
	for _, p := range []string{phaseRun, phaseLayer, phasePush, phaseCache} {
		if landed[p] == 0 {
			t.Errorf("no kill landed during %s", p)
		}
	}

	before := debris(t, dirs, marker, fileSecret, envSecret)
	t.Logf("debris after the kills, before any kiln command: %s", before)

	kiln(t, ctxDir, env, "cache", "ls")
	after := debris(t, dirs, marker, fileSecret, envSecret)
	t.Logf("debris after one kiln command: %s", after)
	if !after.empty() {
		t.Errorf("one kiln command after the kills left: %s\n%s", after, after.detail())
	}

	// A rebuild is correct: every step of build 0 is cached, so it pushes
	// the same image; a killed build's variant builds and holds its files.
	re := kiln(t, ctxDir, env, args(0, "runc")...)
	if d := imageDigest(t, re.Stdout); d != digest0 {
		t.Errorf("rebuild pushed %s, want the first build's %s", d, digest0)
	}
	// The last rebuild also applies kiln's size bound to its directory.
	const bound = 40 << 20
	a := args(1, "chroot")
	kiln(t, ctxDir, env, append(a[:len(a)-1], "--max-cache-size=40MiB", ".")...)
	tree := testenv.Tree(t, testenv.Pull(t, host+"/kill:1"))
	if e := tree["big"]; len(e.Content) != 4000000 {
		t.Errorf("rebuilt /big has %d bytes, want 4000000", len(e.Content))
	}
	if e := tree["big2"]; len(e.Content) != 1000000 {
		t.Errorf("rebuilt /big2 has %d bytes, want 1000000", len(e.Content))
	}
	if e := tree["f"]; string(e.Content) != "context file\n" {
		t.Errorf("rebuilt /f = %q", e.Content)
	}
	if final := debris(t, dirs, marker, fileSecret, envSecret); !final.empty() {
		t.Errorf("after the rebuilds: %s\n%s", final, final.detail())
	}
	// Disk: the kills' leftovers are gone, so what stays is the caches
	// (about 5 MB of layers per build, in kiln's cache, its image store,
	// its snapshots and the local dest). A generous cap still catches
	// abandoned snapshots and temp dirs of 20+ dead builds.
	var total int64
	for _, d := range dirs {
		total += du(t, d)
	}
	own := du(t, filepath.Join(home, ".cache", "kiln"))
	t.Logf("disk used: kiln's directory %d MB (bound %d MB); with TMPDIR and the cache dest %d MB", own>>20, bound>>20, total>>20)
	if own > bound {
		t.Errorf("kiln's directory holds %d MB after the kills and a build with --max-cache-size=40MiB", own>>20)
	}
	if limit := int64(kills+3) * 40 << 20; total > limit {
		t.Errorf("kiln's directories hold %d MB after %d kills, want at most %d MB", total>>20, kills, limit>>20)
	}
}

// killDuring starts a build and SIGKILLs it when its progress shows phase
// want (after a random delay of up to 150 ms), or, for phaseRandom, at a
// random moment of a whole build's duration. It reports the phase the kill
// landed in, read from the output before the kill, and false when the
// build finished first.
func killDuring(t *testing.T, dir string, env, args []string, marker string, n int, want string, rng *mrand.Rand, full time.Duration) (string, bool) {
	t.Helper()
	cmd := exec.Command(testenv.Kiln(t), args...)
	cmd.Dir = dir
	// As testenv.Run does: the test's own home, never the machine's.
	home := testenv.Home(t)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
		"XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "DOCKER_CONFIG="+filepath.Join(home, ".docker"))
	cmd.Env = append(cmd.Env, env...)
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { err := cmd.Wait(); w.Close(); exited <- err }()

	var mu sync.Mutex
	prog := &progress{names: map[string]string{}, logs: map[string]string{}}
	trigger := make(chan struct{})
	var once sync.Once
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			mu.Lock()
			prog.line(sc.Text())
			hit := want != phaseRandom && prog.phase(marker, n) == want
			mu.Unlock()
			if hit {
				once.Do(func() { close(trigger) })
			}
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	var delay time.Duration
	if want == phaseRandom {
		delay = time.Duration(rng.Int64N(int64(full)))
	} else {
		// Within the phase: pushes and cache exports of a few MB to a
		// loopback registry take tens of milliseconds.
		jitter := map[string]time.Duration{phaseRun: 150 * time.Millisecond, phaseLayer: 40 * time.Millisecond, phaseOutput: 60 * time.Millisecond}[want]
		if jitter == 0 {
			jitter = 10 * time.Millisecond
		}
		delay = time.Duration(rng.Int64N(int64(jitter)))
		select {
		case <-trigger:
		case err := <-exited:
			if err != nil {
				t.Fatalf("build %d failed: %v\n%s", n, err, prog.out.String())
			}
			return "", false
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Fatalf("build %d never reached %s:\n%s", n, want, prog.out.String())
		}
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("build %d failed: %v\n%s", n, err, prog.out.String())
		}
		return "", false
	case <-time.After(delay):
	}
	mu.Lock()
	got := prog.phase(marker, n)
	mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGKILL)
	err := <-exited
	if err == nil {
		return "", false // it finished in the same instant
	}
	return got, true
}

// progress follows --progress=plain output: "#ID NAME" opens a step,
// "#ID DONE|CACHED|ERROR ..." closes it, other "#ID ..." lines are its log.
type progress struct {
	out   bytes.Buffer
	names map[string]string // step id -> name
	logs  map[string]string
	open  []string // ids in start order
}

func (p *progress) line(l string) {
	p.out.WriteString(l + "\n")
	id, rest, ok := strings.Cut(l, " ")
	if !ok || !strings.HasPrefix(id, "#") {
		return
	}
	if _, known := p.names[id]; !known {
		p.names[id] = rest
		p.open = append(p.open, id)
		return
	}
	if strings.HasPrefix(rest, "DONE") || strings.HasPrefix(rest, "CACHED") || strings.HasPrefix(rest, "ERROR") {
		for i, o := range p.open {
			if o == id {
				p.open = append(p.open[:i], p.open[i+1:]...)
				break
			}
		}
		return
	}
	p.logs[id] += rest + "\n"
}

// phase names what the build is doing now: the latest open step decides.
func (p *progress) phase(marker string, n int) string {
	for i := len(p.open) - 1; i >= 0; i-- {
		id := p.open[i]
		name := p.names[id]
		switch {
		case strings.Contains(name, "exporting cache"):
			return phaseCache
		case strings.Contains(name, "exporting to registry"), strings.Contains(name, "pushing"):
			return phasePush
		case strings.Contains(name, "exporting to"):
			return phaseOutput
		case strings.Contains(name, "RUN"):
			if strings.Contains(p.logs[id], fmt.Sprintf("%s-%d-wrote", marker, n)) {
				return phaseLayer
			}
			return phaseRun
		}
	}
	return "other"
}

// leftovers counts what dead builds can leave behind.
type leftovers struct {
	mounts, procs, tmpDirs, runDirs, activeSnaps, partial, secrets []string
}

func (l leftovers) String() string {
	return fmt.Sprintf("%d mounts, %d processes, %d kiln-* temp dirs, %d build dirs, %d active snapshots, %d partial cache files, %d files holding a secret",
		len(l.mounts), len(l.procs), len(l.tmpDirs), len(l.runDirs), len(l.activeSnaps), len(l.partial), len(l.secrets))
}

func (l leftovers) empty() bool {
	return len(l.mounts)+len(l.procs)+len(l.tmpDirs)+len(l.runDirs)+len(l.activeSnaps)+len(l.partial)+len(l.secrets) == 0
}

func (l leftovers) detail() string {
	var b strings.Builder
	for _, s := range [][]string{l.mounts, l.procs, l.tmpDirs, l.runDirs, l.activeSnaps, l.partial, l.secrets} {
		for i, x := range s {
			if i == 5 {
				fmt.Fprintf(&b, "  ... %d more\n", len(s)-5)
				break
			}
			fmt.Fprintf(&b, "  %s\n", x)
		}
	}
	return b.String()
}

// debris looks for leftovers under dirs (home, TMPDIR, cache dest).
func debris(t *testing.T, dirs []string, marker string, secrets ...string) leftovers {
	t.Helper()
	var l leftovers
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(info), "\n") {
		for _, d := range dirs {
			if strings.Contains(line, d) {
				l.mounts = append(l.mounts, line)
				break
			}
		}
	}
	for _, pat := range append([]string{marker}, dirs...) {
		out, _ := exec.Command("pgrep", "-af", pat).Output()
		for _, p := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if p != "" && !strings.Contains(p, "pgrep") {
				l.procs = append(l.procs, p)
			}
		}
	}
	tmp, home, dest := dirs[1], dirs[0], dirs[2]
	l.tmpDirs, _ = filepath.Glob(filepath.Join(tmp, "kiln-*"))
	kilnDir := filepath.Join(home, ".cache", "kiln")
	l.runDirs, _ = filepath.Glob(filepath.Join(kilnDir, "run", "*"))
	l.activeSnaps, _ = filepath.Glob(filepath.Join(kilnDir, "snapshots", "a", "*"))
	l.partial, _ = filepath.Glob(filepath.Join(dest, "tmp", "*"))
	own, _ := filepath.Glob(filepath.Join(kilnDir, "cache", "tmp", "*"))
	l.partial = append(l.partial, own...)
	for _, d := range dirs {
		_ = filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
			if err != nil || !fi.Mode().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			for _, s := range secrets {
				if bytes.Contains(b, []byte(s)) {
					l.secrets = append(l.secrets, p)
					break
				}
			}
			return nil
		})
	}
	return l
}

// du is the disk space the files under dir take (each inode once).
func du(t *testing.T, dir string) int64 {
	t.Helper()
	seen := map[uint64]bool{}
	var total int64
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		total += st.Blocks * 512
		return nil
	})
	return total
}

// imageDigest reads the digest kiln prints on its last line of stdout.
func imageDigest(t *testing.T, stdout string) string {
	t.Helper()
	f := strings.Fields(stdout)
	if len(f) == 0 || !strings.HasPrefix(f[0], "sha256:") {
		t.Fatalf("no digest in kiln's output %q", stdout)
	}
	return f[0]
}

func randHex(t *testing.T) string {
	t.Helper()
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// TestKillDuringOutput kills kiln while it writes -o type=local and
// type=oci (tar) dests: what it leaves next to them (the temporary sibling
// that would have been renamed into place) is gone after the next kiln
// command, and another writer's sibling is not touched.
func TestKillDuringOutput(t *testing.T) {
	testenv.Need(t, "runc")
	if os.Getuid() != 0 {
		t.Skip("RUN needs root")
	}
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	ctxDir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN head -c 30000000 /dev/urandom > /big && for i in $(seq 300); do echo $i > /f$i; done\n",
	})
	outDir := t.TempDir()
	other := filepath.Join(outDir, ".out.tmp-someone-else")
	if err := os.Mkdir(other, 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"TMPDIR=" + t.TempDir()}
	args := []string{"build", "--progress=plain", "-o", "type=local,dest=" + filepath.Join(outDir, "out"),
		"-o", "type=oci,dest=" + filepath.Join(outDir, "img.tar"), "."}
	kiln(t, ctxDir, env, args...) // the RUN is cached from here on
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 1))
	var left []string
	for try := 0; try < 8 && len(left) == 0; try++ {
		if _, killed := killDuring(t, ctxDir, env, args, "", 0, phaseOutput, rng, 0); !killed {
			continue
		}
		all, _ := filepath.Glob(filepath.Join(outDir, ".*.tmp-*"))
		for _, p := range all {
			if p != other {
				left = append(left, p)
			}
		}
	}
	if len(left) == 0 {
		t.Fatal("no kill landed while an output was being written")
	}
	t.Logf("a kill during the export left %v", left)
	kiln(t, ctxDir, env, "version")
	for _, p := range left {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s survived the next kiln command", p)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another writer's temporary sibling was removed: %v", err)
	}
}

// TestSweepSparesLiveBuild: the sweep every kiln command starts with
// never touches a running build (its directory's lock is held), whichever
// executor runs its RUN with a secret.
func TestSweepSparesLiveBuild(t *testing.T) {
	testenv.Need(t, "runc")
	if os.Getuid() != 0 {
		t.Skip("RUN needs root")
	}
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	secret := filepath.Join(t.TempDir(), "s")
	if err := os.WriteFile(secret, []byte("live-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, iso := range []string{"chroot", "runc"} {
		t.Run(iso, func(t *testing.T) {
			marker := "kiln-live-" + randHex(t)
			ctxDir := writeContext(t, map[string]string{
				"Dockerfile": "FROM " + base + "\nRUN --mount=type=secret,id=s echo " + marker + " && sleep 3 && cat /run/secrets/s > /got\n",
			})
			out := filepath.Join(t.TempDir(), "out")
			done := make(chan testenv.Result, 1)
			go func() {
				done <- testenv.Run(t, ctxDir, nil, "build", "--progress=plain", "--isolation", iso, "--secret", "id=s,src="+secret, "-o", "type=local,dest="+out, ".")
			}()
			deadline := time.Now().Add(60 * time.Second)
			for {
				if o, _ := exec.Command("pgrep", "-f", marker).Output(); len(o) > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the RUN never started")
				}
				time.Sleep(20 * time.Millisecond)
			}
			for range 3 {
				kiln(t, ctxDir, nil, "cache", "ls")
			}
			res := <-done
			if res.ExitCode != 0 {
				t.Fatalf("the build failed while other kiln commands swept:\n%s", res.Stderr)
			}
			if got := readFile(t, filepath.Join(out, "got")); got != "live-secret" {
				t.Errorf("/got = %q", got)
			}
		})
	}
}
