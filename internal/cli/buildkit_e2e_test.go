package cli_test

import (
	"archive/tar"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/kiln-build/kiln/internal/testenv"
)

// conformanceDockerfile uses every non-RUN instruction in the ways that
// differ between builders: ownership, modes, directory-vs-file copies,
// globs, stage copies, WORKDIR creation, shell-form commands.
const conformanceDockerfile = `ARG BASE
FROM ${BASE} AS base
ENV APP=/app PATH=/app/bin:$PATH
ARG V=1
LABEL v=$V multi="a b"
WORKDIR $APP
COPY --chown=app:staff src/ ./src/
COPY --chown=1000 single.txt ./
COPY --chmod=0750 bin/ ./bin/
COPY docs/*.txt ./docs/
COPY single.txt renamed.txt
COPY nested /deep/er/
ADD archive.tar.gz /opt/
RUN mkdir -p /opt/existing && chmod 0711 /opt/existing
ADD rooted.tar.gz /opt/existing/
ADD rooted.tar.gz /opt/extracted/
COPY setxattr /usr/local/bin/
RUN cp /bin/busybox /bin/capped && setxattr /bin/capped security.capability 0100000200040000000000000000000000000000 && cp /bin/busybox /bin/noted && setxattr /bin/noted user.note 6e6f7465
COPY capped.txt /capped-copy
ADD capped.tar.gz /opt/capped/
COPY linked/ /linked/
ADD single.txt nested /added/
COPY single.txt /etc
COPY src/link /linked
COPY docs/one.txt docs/two.txt /multi/
COPY nested /etc/
COPY --chown=app single.txt /home/app/owned.txt
COPY --chown=1000:50 nested /home/app/nested
COPY . /all/
WORKDIR /tmp

FROM scratch AS files
COPY --chown=33:33 src /www

FROM base
COPY --from=files /www /srv/www
COPY --from=files /www/sub /srv/sub-only
COPY --from=base /etc/base-release /srv/
RUN rm /etc/base-release && rm -rf /deep && mkdir -p /run-made/sub && echo x > /run-made/f && chmod 0600 /run-made/f && ln -s f /run-made/link
RUN mv /run-made/sub /run-made/moved && rm -rf /opt/pkg && mkdir /opt/pkg && echo new > /opt/pkg/new
USER 1000:50
WORKDIR /srv/user-made
RUN touch by-uid && mkdir -p /tmp/by-uid-dir
USER app
RUN touch /tmp/by-app
WORKDIR data
EXPOSE 80 53/udp
VOLUME ["/cache", "/logs"]
STOPSIGNAL SIGINT
HEALTHCHECK --interval=10s --retries=2 CMD ["true"]
SHELL ["/bin/sh", "-c"]
ENTRYPOINT echo hi
CMD ["--flag"]
ONBUILD LABEL child=1
`

// TestMatchesBuildKit builds the same Dockerfile with kiln and with
// `docker build` (BuildKit, from Debian's docker.io) and compares the
// images file for file and config field for field. Debian's Docker Engine
// embeds an older Dockerfile frontend without heredocs (and no network
// reaches a newer `# syntax=` image), so heredocs are tested elsewhere.
func TestMatchesBuildKit(t *testing.T) {
	docker := testenv.Need(t, "/usr/bin/docker")
	if err := exec.Command(docker, "version").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no Docker Engine reachable (CI=true): %v", err)
		}
		t.Skipf("no Docker Engine reachable: %v", err)
	}
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	dir := writeContext(t, map[string]string{
		"Dockerfile":       conformanceDockerfile,
		"src/a.go":         "package a\n",
		"src/sub/b.go":     "package sub\n",
		"src/link":         "symlink:a.go",
		"single.txt":       "single\n",
		"bin/tool":         "#!/bin/sh\n",
		"docs/one.txt":     "1\n",
		"docs/two.txt":     "2\n",
		"docs/skip.md":     "md\n",
		"nested/x/y/z.txt": "z\n",
		".dockerignore":    "**/*.md\n",
	})
	if err := os.WriteFile(filepath.Join(dir, "archive.tar.gz"), tarGz(t, map[string]string{"pkg/a.txt": "in archive\n", "pkg/b/c.txt": "c\n"}), 0o644); err != nil {
		t.Fatal(err)
	}

	// As `tar -C dir -czf rooted.tar.gz .` writes it: a "./" entry first,
	// owned by the user who made it.
	rooted := tarGzEntries(t, []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1000, Gid: 1000},
		{Name: "./f.txt", Typeflag: tar.TypeReg, Mode: 0o640, Uid: 1000, Gid: 1000, Size: 2},
	}, "f\n")
	if err := os.WriteFile(filepath.Join(dir, "rooted.tar.gz"), rooted, 0o644); err != nil {
		t.Fatal(err)
	}

	// A static program that sets an xattr, since busybox has no setcap;
	// and a context file that has capabilities.
	buildSetxattr(t, filepath.Join(dir, "setxattr"))
	if err := os.WriteFile(filepath.Join(dir, "capped.txt"), []byte("capped\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(dir, "capped.txt"), "security.capability", netBindCaps, 0); err != nil {
		t.Fatal(err)
	}

	// A hard-linked pair, and a file linked from outside what is copied.
	for _, f := range []string{"linked/a", "outside"} {
		if err := os.MkdirAll(filepath.Join(dir, path.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "linked/a"), []byte("linked\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"linked/sub/b", "outside"} {
		_ = os.MkdirAll(filepath.Dir(filepath.Join(dir, l)), 0o755)
		if err := os.Link(filepath.Join(dir, "linked/a"), filepath.Join(dir, l)); err != nil {
			t.Fatal(err)
		}
	}
	capped := tarGzEntries(t, []*tar.Header{{Name: "capbin", Typeflag: tar.TypeReg, Mode: 0o755, Size: 4, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.security.capability": string(netBindCaps), "SCHILY.xattr.user.note": "n"}}}, "bin\n")
	if err := os.WriteFile(filepath.Join(dir, "capped.tar.gz"), capped, 0o644); err != nil {
		t.Fatal(err)
	}

	kilnRef := host + "/conformance:kiln"
	kiln(t, dir, nil, "build", "--progress=plain", "--push", "-t", kilnRef, "--build-arg", "BASE="+base, "--build-arg", "V=7", ".")

	bkRef := host + "/conformance:buildkit"
	build := exec.Command(docker, "build", "--progress=plain", "-t", bkRef, "--build-arg", "BASE="+base, "--build-arg", "V=7", ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "DOCKER_BUILDKIT=1")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command(docker, "rmi", "-f", bkRef).Run() })
	if out, err := exec.Command(docker, "push", bkRef).CombinedOutput(); err != nil {
		t.Fatalf("docker push: %v\n%s", err, out)
	}

	kimg, bimg := testenv.Pull(t, kilnRef), testenv.Pull(t, bkRef)
	ktree, btree := testenv.Tree(t, kimg), testenv.Tree(t, bimg)
	for _, p := range slices.Sorted(keys(btree)) {
		b := btree[p]
		k, ok := ktree[p]
		if !ok {
			t.Errorf("%s: in BuildKit's image, missing from kiln's", p)
			continue
		}
		if k.Type != b.Type || k.Mode != b.Mode || k.UID != b.UID || k.GID != b.GID || k.Linkname != b.Linkname || string(k.Content) != string(b.Content) || !maps.Equal(k.Xattrs, b.Xattrs) {
			t.Errorf("%s differs:\n  kiln     type=%q mode=%#o owner=%d:%d link=%q xattrs=%q content=%q\n  buildkit type=%q mode=%#o owner=%d:%d link=%q xattrs=%q content=%q",
				p, k.Type, k.Mode, k.UID, k.GID, k.Linkname, k.Xattrs, trim(k.Content), b.Type, b.Mode, b.UID, b.GID, b.Linkname, b.Xattrs, trim(b.Content))
		}
	}
	for p := range ktree {
		if _, ok := btree[p]; !ok {
			t.Errorf("%s: in kiln's image, not in BuildKit's", p)
		}
	}

	kc, bc := configOf(t, kimg), configOf(t, bimg)
	compareConfig(t, kc.Config, bc.Config)
	if kc.Author != bc.Author || kc.OS != bc.OS || kc.Architecture != bc.Architecture {
		t.Errorf("author/os/arch: kiln %q %s/%s, buildkit %q %s/%s", kc.Author, kc.OS, kc.Architecture, bc.Author, bc.OS, bc.Architecture)
	}
	klayers, _ := kimg.Layers()
	blayers, _ := bimg.Layers()
	if len(klayers) != len(blayers) {
		t.Errorf("kiln made %d layers, BuildKit %d", len(klayers), len(blayers))
	}
	// The engine's embedded frontend is older than the BuildKit source kiln
	// follows, whose created_by texts changed since (--chown/--chmod and
	// --build-arg values now recorded, EXPOSE and HEALTHCHECK formatting),
	// so compare the history's shape: instruction, layer or not. The exact
	// texts are pinned in TestBuildMultiStagePushAndReadBack.
	kh, bh := historyLines(kc), historyLines(bc)
	if !slices.Equal(kh, bh) {
		t.Errorf("history differs:\nkiln:\n  %s\nbuildkit:\n  %s", strings.Join(kh, "\n  "), strings.Join(bh, "\n  "))
	}
}

func keys[M ~map[string]V, V any](m M) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func trim(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

func historyLines(cf *v1.ConfigFile) []string {
	var out []string
	for _, h := range cf.History {
		l, _, _ := strings.Cut(h.CreatedBy, " ")
		if h.EmptyLayer {
			l += " (empty)"
		}
		out = append(out, l)
	}
	return out
}

func compareConfig(t *testing.T, k, b v1.Config) {
	t.Helper()
	check := func(field string, kv, bv any, equal bool) {
		if !equal {
			t.Errorf("config %s: kiln %v, buildkit %v", field, kv, bv)
		}
	}
	check("Env", k.Env, b.Env, slices.Equal(k.Env, b.Env))
	check("Cmd", k.Cmd, b.Cmd, slices.Equal(k.Cmd, b.Cmd))
	check("Entrypoint", k.Entrypoint, b.Entrypoint, slices.Equal(k.Entrypoint, b.Entrypoint))
	check("Shell", k.Shell, b.Shell, slices.Equal(k.Shell, b.Shell))
	check("OnBuild", k.OnBuild, b.OnBuild, slices.Equal(k.OnBuild, b.OnBuild))
	check("WorkingDir", k.WorkingDir, b.WorkingDir, k.WorkingDir == b.WorkingDir)
	check("User", k.User, b.User, k.User == b.User)
	check("StopSignal", k.StopSignal, b.StopSignal, k.StopSignal == b.StopSignal)
	check("ArgsEscaped", k.ArgsEscaped, b.ArgsEscaped, k.ArgsEscaped == b.ArgsEscaped)
	check("ExposedPorts", k.ExposedPorts, b.ExposedPorts, sameKeys(k.ExposedPorts, b.ExposedPorts))
	check("Volumes", k.Volumes, b.Volumes, sameKeys(k.Volumes, b.Volumes))
	check("Labels", k.Labels, b.Labels, equalMaps(k.Labels, b.Labels))
	kh, bh := k.Healthcheck, b.Healthcheck
	check("Healthcheck", kh, bh, (kh == nil) == (bh == nil) && (kh == nil || slices.Equal(kh.Test, bh.Test) &&
		kh.Interval == bh.Interval && kh.Timeout == bh.Timeout && kh.StartPeriod == bh.StartPeriod && kh.Retries == bh.Retries))
}

func sameKeys(a, b map[string]struct{}) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

// netBindCaps is cap_net_bind_service, permitted and effective, as setcap
// writes it (VFS_CAP_REVISION_2).
var netBindCaps = []byte{1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// buildSetxattr builds `setxattr PATH NAME HEXVALUE` as a static binary.
func buildSetxattr(t *testing.T, out string) {
	t.Helper()
	buildStaticGo(t, out, `package main

import (
	"encoding/hex"
	"os"
	"syscall"
)

func main() {
	v, err := hex.DecodeString(os.Args[3])
	if err == nil {
		err = syscall.Setxattr(os.Args[1], os.Args[2], v, 0)
	}
	if err != nil {
		println("setxattr:", err.Error())
		os.Exit(1)
	}
}
`)
}

// buildStaticGo builds a one-file Go program (standard library only) as a
// static binary for a busybox image.
func buildStaticGo(t *testing.T, out, prog string) {
	t.Helper()
	src := t.TempDir()
	for name, body := range map[string]string{"go.mod": "module kilnhelper\n\ngo 1.22\n", "main.go": prog} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-trimpath", "-o", out, ".")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOTOOLCHAIN=local", "GOFLAGS=")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", filepath.Base(out), err, b)
	}
}
