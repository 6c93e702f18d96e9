package cli_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/md5"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/testenv"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

const secretValue = "s3cr3t-value"

// secretMD5 lets a RUN check the secret it was given without the
// Dockerfile (and so the history and the logs) holding the value.
var secretMD5 = fmt.Sprintf("%x", md5.Sum([]byte(secretValue)))

// runDockerfile exercises RUN in every form and with every mount type.
var runDockerfile = `ARG BASE
FROM ${BASE} AS src
FROM ${BASE} AS base
ARG BUILD_ONLY=arg-value
ENV KEEP=1
RUN echo created > /created.txt && mkdir -p /data && echo "$BUILD_ONLY $KEEP" > /data/arg.txt
RUN rm /etc/base-release && rm -rf /home/app
RUN mkdir -p /opq/sub && echo old > /opq/old && echo old > /opq/sub/old
RUN rm -rf /opq && mkdir /opq && echo new > /opq/new
USER app
WORKDIR /work
RUN id -u > uid.txt && id -g > gid.txt && pwd > pwd.txt && touch owned-by-app
USER root
RUN --mount=type=cache,target=/cache echo hit >> /cache/count && wc -l < /cache/count > /cache-lines.txt
RUN --mount=type=cache,id=shared,target=/c2,uid=1000,gid=1000,mode=0700 stat -c '%u:%g:%a' /c2 > /cache-perms.txt
RUN --mount=type=bind,source=ctxfile.txt,target=/mnt/ctx.txt cp /mnt/ctx.txt /from-bind.txt
RUN --mount=type=bind,source=ctxfile.txt,target=/mnt/ro.txt sh -c 'echo x > /mnt/ro.txt' || echo refused > /bind-ro-refused.txt
RUN --mount=type=bind,from=src,source=/etc,target=/mnt/etc,rw touch /mnt/etc/should-vanish && ls /mnt/etc > /bind-etc-list.txt
RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /secret-len.txt && stat -c '%a' /run/secrets/token > /secret-mode.txt
RUN --mount=type=secret,id=token,env=TOKEN test "$(printf %s "$TOKEN" | md5sum | cut -c1-32)" = "` + secretMD5 + `" && echo ok > /secret-env-ok
RUN --mount=type=tmpfs,target=/scratch echo x > /scratch/x && grep -q ' /scratch tmpfs' /proc/mounts && echo tmpfs > /tmpfs-ok
RUN <<EOF
echo heredoc > /heredoc.txt
EOF
RUN <<EOF
#!/bin/sh
echo script "$0" > /script.txt
EOF
RUN --network=none grep -c ':' /proc/net/dev > /netdev-count.txt
RUN ["/bin/sh", "-c", "echo exec-form > /exec.txt"]
RUN <<FILE1 cat > /file1 && <<FILE2 cat > /file2
I am
first
FILE1
I am
second
FILE2
RUN --mount=type=cache,target=/seeded,from=src,source=/etc,sharing=locked head -1 /seeded/passwd > /seeded-first.txt
RUN --mount=type=cache,target=/priv,sharing=private touch /priv/x && ls /priv > /private-list.txt
RUN --mount=type=bind,from=IMAGE_REF,source=/etc/group,target=/img-group cp /img-group /from-image-group.txt
RUN --mount=type=secret,id=token,target=/tok,mode=0440,uid=1000,gid=50 stat -c '%a %u %g' /tok > /secret-custom.txt
RUN --mount=type=tmpfs,target=/small,size=1m grep ' /small ' /proc/mounts | grep -o 'size=[0-9a-z]*' > /tmpfs-size.txt
`

func runContext(t *testing.T, imageRef string) string {
	return writeContext(t, map[string]string{
		"Dockerfile":  strings.Replace(runDockerfile, "IMAGE_REF", imageRef, 1),
		"ctxfile.txt": "from the context\n",
	})
}

var combos = []struct{ isolation, snapshotter string }{
	{"chroot", "overlay"},
	{"chroot", "copy"},
	{"runc", "overlay"},
	{"runc", "copy"},
}

func TestRunEveryExecutorAndSnapshotter(t *testing.T) {
	testenv.Need(t, "runc")
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	secretFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(secretFile, []byte(secretValue), 0o600); err != nil {
		t.Fatal(err)
	}
	trees := map[string]map[string]testenv.Entry{}
	for _, c := range combos {
		name := c.isolation + "-" + c.snapshotter
		t.Run(name, func(t *testing.T) {
			dir := runContext(t, base)
			ref := host + "/run:" + name
			args := []string{"build", "--progress=plain", "--push", "-t", ref, "--build-arg", "BASE=" + base,
				"--secret", "id=token,src=" + secretFile, "--isolation", c.isolation, "--snapshotter", c.snapshotter, "."}
			// Twice, with the same kiln directory; the second with
			// --no-cache so every RUN runs again: the cache mount persists.
			first := kiln(t, dir, nil, args...)
			second := kiln(t, dir, nil, append([]string{"build", "--no-cache"}, args[1:]...)...)
			for _, out := range []string{first.Stdout + first.Stderr, second.Stdout + second.Stderr} {
				if strings.Contains(out, secretValue) {
					t.Errorf("the secret's value reached kiln's output")
				}
			}
			img := testenv.Pull(t, ref)
			assertNoSecret(t, img)
			assertNoSecretOnDisk(t, testenv.Home(t))
			tree := testenv.Tree(t, img)
			trees[name] = tree
			checkRunTree(t, tree)
			checkRunConfig(t, img)
		})
	}
	// The same file tree whichever executor and snapshotter built it.
	ref := trees["chroot-overlay"]
	for name, tree := range trees {
		if ref == nil || tree == nil {
			continue
		}
		for p, e := range ref {
			o, ok := tree[p]
			if !ok {
				t.Errorf("%s: %s missing (present with chroot-overlay)", name, p)
				continue
			}
			if o.Type != e.Type || o.Mode != e.Mode || o.UID != e.UID || o.GID != e.GID || o.Linkname != e.Linkname || !bytes.Equal(o.Content, e.Content) {
				t.Errorf("%s: %s differs from chroot-overlay", name, p)
			}
		}
		for p := range tree {
			if _, ok := ref[p]; !ok {
				t.Errorf("%s: %s extra (absent with chroot-overlay)", name, p)
			}
		}
	}
}

func checkRunTree(t *testing.T, tree map[string]testenv.Entry) {
	t.Helper()
	const reg = tar.TypeReg
	checkTree(t, tree, map[string]want{
		"created.txt":          {typ: reg, mode: 0o644, content: "created\n"},
		"data/arg.txt":         {typ: reg, mode: 0o644, content: "arg-value 1\n"},
		"opq/new":              {typ: reg, mode: 0o644, content: "new\n"},
		"work":                 {typ: tar.TypeDir, mode: 0o755, uid: 1000, gid: 1000},
		"work/uid.txt":         {typ: reg, mode: 0o644, uid: 1000, gid: 1000, content: "1000\n"},
		"work/gid.txt":         {typ: reg, mode: 0o644, uid: 1000, gid: 1000, content: "1000\n"},
		"work/pwd.txt":         {typ: reg, mode: 0o644, uid: 1000, gid: 1000, content: "/work\n"},
		"work/owned-by-app":    {typ: reg, mode: 0o644, uid: 1000, gid: 1000},
		"cache-lines.txt":      {typ: reg, mode: 0o644, content: "2\n"},
		"cache-perms.txt":      {typ: reg, mode: 0o644, content: "1000:1000:700\n"},
		"from-bind.txt":        {typ: reg, mode: 0o644, content: "from the context\n"},
		"bind-ro-refused.txt":  {typ: reg, mode: 0o644, content: "refused\n"},
		"secret-len.txt":       {typ: reg, mode: 0o644, content: "12\n"},
		"secret-mode.txt":      {typ: reg, mode: 0o644, content: "400\n"},
		"secret-env-ok":        {typ: reg, mode: 0o644, content: "ok\n"},
		"tmpfs-ok":             {typ: reg, mode: 0o644, content: "tmpfs\n"},
		"heredoc.txt":          {typ: reg, mode: 0o644, content: "heredoc\n"},
		"script.txt":           {typ: reg, mode: 0o644, content: "script /dev/pipes/EOF\n"},
		"netdev-count.txt":     {typ: reg, mode: 0o644, content: "1\n"},
		"exec.txt":             {typ: reg, mode: 0o644, content: "exec-form\n"},
		"file1":                {typ: reg, mode: 0o644, content: "I am\nfirst\n"},
		"file2":                {typ: reg, mode: 0o644, content: "I am\nsecond\n"},
		"seeded-first.txt":     {typ: reg, mode: 0o644, content: strings.SplitAfter(testenv.BusyboxPasswd, "\n")[0]},
		"private-list.txt":     {typ: reg, mode: 0o644, content: "x\n"},
		"from-image-group.txt": {typ: reg, mode: 0o644, content: testenv.BusyboxGroup},
		"secret-custom.txt":    {typ: reg, mode: 0o644, content: "440 1000 50\n"},
		"tmpfs-size.txt":       {typ: reg, mode: 0o644, content: "size=1024k\n"},
		"etc/passwd":           {typ: reg, mode: 0o644, content: testenv.BusyboxPasswd},
	})
	if e, ok := tree["bind-etc-list.txt"]; !ok || !strings.Contains(string(e.Content), "passwd") || !strings.Contains(string(e.Content), "should-vanish") {
		t.Errorf("bind-etc-list.txt = %q: a bind from a stage shows its files, and rw lets the step write", e.Content)
	}
	for _, gone := range []string{
		"etc/base-release", "home/app", "opq/old", "opq/sub", // deleted by RUN: whiteouts and opaque dirs
		"cache", "c2", "mnt", "scratch", "run/secrets", "dev/pipes", "seeded", "priv", "img-group", "tok", "small", // mount points never reach the image
		"etc/should-vanish", "etc/resolv.conf", "etc/hosts", // rw bind writes vanish; host files are mounted, not copied
	} {
		if _, ok := tree[gone]; ok {
			t.Errorf("%s is in the image", gone)
		}
	}
}

func checkRunConfig(t *testing.T, img v1.Image) {
	t.Helper()
	cf := configOf(t, img)
	for _, kv := range cf.Config.Env {
		if strings.HasPrefix(kv, "BUILD_ONLY=") || strings.Contains(kv, secretValue) {
			t.Errorf("Env holds %q: ARGs and secrets never enter the config", kv)
		}
	}
	var runs []string
	for _, h := range cf.History {
		if strings.HasPrefix(h.CreatedBy, "RUN ") {
			runs = append(runs, h.CreatedBy)
		}
	}
	if len(runs) == 0 || runs[0] != "RUN |1 BUILD_ONLY=arg-value /bin/sh -c echo created > /created.txt && mkdir -p /data && echo \"$BUILD_ONLY $KEEP\" > /data/arg.txt # buildkit" {
		t.Errorf("first RUN history = %q", runs)
	}
}

// assertNoSecret reads every layer and the config byte for byte; it also
// checks that a deletion travels as a whiteout entry.
func assertNoSecret(t *testing.T, img v1.Image) {
	t.Helper()
	raw, _ := img.RawConfigFile()
	if bytes.Contains(raw, []byte(secretValue)) {
		t.Error("the secret is in the image config")
	}
	layers, _ := img.Layers()
	whiteout, opaque := false, false
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(secretValue)) {
			t.Errorf("layer %d holds the secret", i)
		}
		whiteout = whiteout || bytes.Contains(b, []byte(".wh.base-release"))
		opaque = opaque || bytes.Contains(b, []byte("opq/.wh..wh..opq")) || bytes.Contains(b, []byte("opq/.wh.old"))
	}
	if !whiteout {
		t.Error("no layer carries the whiteout for the deleted /etc/base-release")
	}
	if !opaque {
		t.Error("no layer hides the old /opq: neither an opaque marker nor whiteouts for its entries")
	}
}

// assertNoSecretOnDisk scans kiln's own directory (extracted layers, cache
// mounts, the image store) for the secret's bytes.
func assertNoSecretOnDisk(t *testing.T, dir string) {
	t.Helper()
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.Mode().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(secretValue)) {
			t.Errorf("%s holds the secret", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A failing RUN stops the build with its exit code, its line and the last
// lines it printed.
func TestRunFailureNamesLineAndExitCode(t *testing.T) {
	testenv.Need(t, "runc")
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	for _, iso := range []string{"chroot", "runc"} {
		t.Run(iso, func(t *testing.T) {
			dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo fine\nRUN echo about to fail && echo on stderr >&2 && exit 3\nRUN echo never\n"})
			res := testenv.Run(t, dir, nil, "build", "--progress=plain", "--isolation", iso, "--push", "-t", host+"/fail:"+iso, ".")
			if res.ExitCode == 0 {
				t.Fatal("a failing RUN did not fail the build")
			}
			for _, w := range []string{"Dockerfile:3:", "exit code: 3", "about to fail", "on stderr"} {
				if !strings.Contains(res.Stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, res.Stderr)
				}
			}
			if strings.Contains(res.Stderr, "never") {
				t.Error("a step after the failing RUN ran")
			}
		})
	}
}

// Ctrl-C during a RUN stops kiln promptly and leaves no mount and no
// process behind.
func TestInterruptedRunLeavesNoMounts(t *testing.T) {
	testenv.Need(t, "runc")
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	for _, c := range combos {
		t.Run(c.isolation+"-"+c.snapshotter, func(t *testing.T) {
			tmp := t.TempDir()
			marker := "kiln-interrupt-" + c.isolation + "-" + c.snapshotter
			dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t echo started-" + marker + " && sleep 300\n"})
			cmd := exec.Command(testenv.Kiln(t), "build", "--progress=plain", "--isolation", c.isolation, "--snapshotter", c.snapshotter, ".")
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp, "XDG_CACHE_HOME="+filepath.Join(tmp, "cache"))
			stderr, err := cmd.StderrPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			started := make(chan struct{})
			go func() {
				sc := bufio.NewScanner(stderr)
				once := false
				for sc.Scan() {
					if !once && strings.Contains(sc.Text(), "started-"+marker) {
						once = true
						close(started)
					}
				}
			}()
			select {
			case <-started:
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				t.Fatal("the RUN never started")
			}
			begin := time.Now()
			cmd.Process.Signal(syscall.SIGINT)
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			select {
			case err := <-waited:
				if err == nil {
					t.Error("an interrupted build exited 0")
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatal("kiln did not stop within 30s of SIGINT")
			}
			t.Logf("stopped %v after SIGINT", time.Since(begin))
			info, err := os.ReadFile("/proc/self/mountinfo")
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(info), tmp) {
				t.Errorf("mounts left behind under %s:\n%s", tmp, grepLines(string(info), tmp))
			}
			if out, _ := exec.Command("pgrep", "-f", "started-"+marker).Output(); len(out) > 0 {
				t.Errorf("the RUN's processes are still alive: %s", out)
			}
			ents, _ := os.ReadDir(tmp)
			for _, e := range ents {
				if e.Name() != "cache" {
					t.Errorf("temporary %s left in TMPDIR after the interrupted build", e.Name())
				}
			}
		})
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// RUN --security=insecure with --allow security.insecure runs privileged
// (here: it mounts a tmpfs), as BuildKit's entitlement does; the next RUN
// is sandboxed again. Without --allow the build fails (TestBadInput).
func TestRunSecurityInsecure(t *testing.T) {
	testenv.Need(t, "runc")
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	df := "FROM " + base + "\n" +
		"RUN --security=insecure mkdir -p /m && mount -t tmpfs none /m && echo in-tmpfs > /m/f && cat /m/f > /privileged && umount /m\n" +
		"RUN mkdir -p /m && (mount -t tmpfs none /m 2>/dev/null && echo mounted || echo refused) > /sandboxed\n"
	for _, iso := range []string{"chroot", "runc"} {
		t.Run(iso, func(t *testing.T) {
			dir := writeContext(t, map[string]string{"Dockerfile": df})
			ref := host + "/insecure:" + iso
			kiln(t, dir, nil, "build", "--progress=plain", "--isolation", iso, "--allow", "security.insecure", "--push", "-t", ref, ".")
			tree := testenv.Tree(t, testenv.Pull(t, ref))
			if got := string(tree["privileged"].Content); got != "in-tmpfs\n" {
				t.Errorf("/privileged = %q, want what the insecure RUN's tmpfs held", got)
			}
			if got := string(tree["sandboxed"].Content); got != "refused\n" {
				t.Errorf("/sandboxed = %q: the RUN after the insecure one was not sandboxed", got)
			}
		})
	}
}

// agentKeysProg prints how many keys the agent at $SSH_AUTH_SOCK holds,
// speaking the agent protocol (REQUEST_IDENTITIES) itself: busybox has no
// ssh-add.
const agentKeysProg = `package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	c, err := net.Dial("unix", os.Getenv("SSH_AUTH_SOCK"))
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	c.Write([]byte{0, 0, 0, 1, 11})
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		fmt.Println("read:", err)
		os.Exit(1)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(c, body); err != nil || len(body) < 5 || body[0] != 12 {
		fmt.Println("bad answer", err)
		os.Exit(1)
	}
	fmt.Println("keys:", binary.BigEndian.Uint32(body[1:5]))
}
`

// RUN --mount=type=ssh reaches the agent --ssh names, as in BuildKit: the
// user's agent (SSH_AUTH_SOCK) by default, key files kiln serves itself,
// through a socket of the step's own at /run/buildkit/ssh_agent.N (0600
// root unless mode/uid/gid); an optional id nobody forwarded is skipped,
// and nothing of it stays in the image.
func TestRunSSHMount(t *testing.T) {
	testenv.Need(t, "runc")
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")

	// The user's agent, holding two keys.
	keyring := agent.NewKeyring()
	for range 2 {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		if err := keyring.Add(agent.AddedKey{PrivateKey: priv}); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _ = agent.ServeAgent(keyring, c) }()
		}
	}()
	// A key file.
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	blk, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(blk), 0o600); err != nil {
		t.Fatal(err)
	}

	df := "FROM " + base + "\nCOPY agentkeys /usr/local/bin/\n" +
		"RUN --mount=type=ssh agentkeys > /default.txt && echo $SSH_AUTH_SOCK > /sock.txt && ls -l $SSH_AUTH_SOCK | cut -c1-10 > /perm.txt\n" +
		"RUN --mount=type=ssh,id=deploy,target=/k.sock,mode=0666 SSH_AUTH_SOCK=/k.sock agentkeys > /file.txt && ls -l /k.sock | cut -c1-10 > /perm2.txt\n" +
		"RUN --mount=type=ssh,id=absent echo skipped > /absent.txt\n"
	for _, iso := range []string{"chroot", "runc"} {
		t.Run(iso, func(t *testing.T) {
			dir := writeContext(t, map[string]string{"Dockerfile": df})
			buildStaticGo(t, filepath.Join(dir, "agentkeys"), agentKeysProg)
			ref := host + "/ssh:" + iso
			kiln(t, dir, []string{"SSH_AUTH_SOCK=" + sock}, "build", "--progress=plain", "--isolation", iso,
				"--ssh", "default", "--ssh", "deploy="+keyFile, "--push", "-t", ref, ".")
			tree := testenv.Tree(t, testenv.Pull(t, ref))
			for p, want := range map[string]string{
				"default.txt": "keys: 2\n", "sock.txt": "/run/buildkit/ssh_agent.0\n", "perm.txt": "srw-------\n",
				"file.txt": "keys: 1\n", "perm2.txt": "srw-rw-rw-\n", "absent.txt": "skipped\n",
			} {
				if got := string(tree[p].Content); got != want {
					t.Errorf("/%s = %q, want %q", p, got, want)
				}
			}
			for p := range tree {
				if strings.Contains(p, "ssh_agent") || p == "k.sock" {
					t.Errorf("%s is in the image: an ssh mount left its socket behind", p)
				}
			}
		})
	}
}
