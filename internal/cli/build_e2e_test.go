package cli_test

import (
	"archive/tar"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/testenv"
)

// mainDockerfile exercises every instruction except RUN across four stages,
// one of which (broken) the target does not need: if kiln built it, the
// build would fail on its missing source.
const mainDockerfile = `# syntax=docker/dockerfile:1
ARG BASE
ARG VERSION=1.0
FROM ${BASE} AS base
ENV APP=/app GREETING="hello world"
ARG VERSION
LABEL version=$VERSION team="kiln"
WORKDIR $APP
COPY --chown=app:staff src/ ./src/
COPY --chmod=0755 bin/tool.sh /usr/local/bin/tool
COPY --chmod=u+x,go-r docs/a.txt /docs/symbolic
COPY docs/*.txt /docs/
COPY archive.tar.gz /opt/
ADD archive.tar.gz /opt/extracted/
COPY . /ctx/

FROM scratch AS assets
ARG VERSION
COPY --chown=1000:1000 assets /assets
COPY <<EOT /assets/inline.txt
inline $VERSION "quoted"
EOT

FROM scratch AS broken
COPY does-not-exist /x

FROM base AS final
COPY --from=assets /assets /srv/assets
COPY --from=0 /etc/base-release /etc/copied-release
COPY --from=${IMAGE_PLACEHOLDER} /etc/group /from-image/group
USER app
WORKDIR sub
EXPOSE 8080 9000-9001/udp
VOLUME /data
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=2s --retries=3 CMD wget -q localhost:8080
SHELL ["/bin/sh", "-ec"]
CMD echo run
ENTRYPOINT ["/usr/local/bin/tool"]
MAINTAINER kiln team
ONBUILD COPY . /onbuild
`

func mainContext(t *testing.T, imageRef string) string {
	t.Helper()
	dir := writeContext(t, map[string]string{
		"Dockerfile":         strings.Replace(mainDockerfile, "${IMAGE_PLACEHOLDER}", imageRef, 1),
		"src/main.go":        "package main\n",
		"src/pkg/util.go":    "package pkg\n",
		"src/current":        "symlink:main.go",
		"bin/tool.sh":        "#!/bin/sh\necho tool\n",
		"docs/a.txt":         "a\n",
		"docs/b.txt":         "b\n",
		"docs/c.md":          "c\n",
		"docs/keep.md":       "keep\n",
		"assets/logo.svg":    "<svg/>",
		"secret.txt":         "never in the image",
		".dockerignore":      "secret.txt\ndocs/*.md\n!docs/keep.md\n",
		"assets/sub/x.json":  "{}",
		"src/pkg/.hidden.go": "package pkg\n",
	})
	if err := os.WriteFile(filepath.Join(dir, "archive.tar.gz"), tarGz(t, map[string]string{"pkg/readme.txt": "from the archive\n"}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "src/main.go"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBuildMultiStagePushAndReadBack(t *testing.T) {
	host := testenv.Registry(t)
	base, baseDigest := testenv.BusyboxImage(t, host, "busybox")
	byDigest := host + "/busybox@" + baseDigest.String()
	dir := mainContext(t, base) // FROM by digest, COPY --from by tag
	meta := filepath.Join(t.TempDir(), "metadata.json")
	iid := filepath.Join(t.TempDir(), "iid")

	kiln(t, dir, nil, "build", "--progress=plain", "--push",
		"-t", host+"/app:v1", "-t", host+"/app:latest",
		"--build-arg", "BASE="+byDigest, "--build-arg", "VERSION=2.0",
		"--label", "extra=yes", "--target", "final",
		"--metadata-file", meta, "--iidfile", iid, ".")

	img := testenv.Pull(t, host+"/app:v1")
	latest := testenv.Pull(t, host+"/app:latest")
	digest, _ := img.Digest()
	latestDigest, _ := latest.Digest()
	if digest != latestDigest {
		t.Errorf("tags point at different images: v1=%s latest=%s", digest, latestDigest)
	}

	var md map[string]any
	if err := json.Unmarshal([]byte(readFile(t, meta)), &md); err != nil {
		t.Fatalf("metadata file: %v", err)
	}
	if md["containerimage.digest"] != digest.String() {
		t.Errorf("metadata containerimage.digest = %v, want %s", md["containerimage.digest"], digest)
	}
	cfgDigest, _ := img.ConfigName()
	if md["containerimage.config.digest"] != cfgDigest.String() || readFile(t, iid) != cfgDigest.String() {
		t.Errorf("metadata config digest %v / iidfile %q, want %s", md["containerimage.config.digest"], readFile(t, iid), cfgDigest)
	}
	if md["image.name"] != host+"/app:v1,"+host+"/app:latest" {
		t.Errorf("metadata image.name = %v", md["image.name"])
	}

	tree := testenv.Tree(t, img)
	const reg, dirT, sym = tar.TypeReg, tar.TypeDir, tar.TypeSymlink
	checkTree(t, tree, map[string]want{
		// From the base image, untouched.
		"etc/base-release": {typ: reg, mode: 0o644, content: testenv.BusyboxRelease},
		"bin/sh":           {typ: sym, mode: 0o777, link: "/bin/busybox"},
		// WORKDIR created as root (no USER yet); COPY --chown by name.
		"app":                    {typ: dirT, mode: 0o755},
		"app/src":                {typ: dirT, mode: 0o755, uid: 1000, gid: 50},
		"app/src/main.go":        {typ: reg, mode: 0o600, uid: 1000, gid: 50, content: "package main\n"},
		"app/src/pkg/util.go":    {typ: reg, mode: 0o644, uid: 1000, gid: 50, content: "package pkg\n"},
		"app/src/pkg/.hidden.go": {typ: reg, mode: 0o644, uid: 1000, gid: 50, content: "package pkg\n"},
		"app/src/current":        {typ: sym, mode: 0o777, uid: 1000, gid: 50, link: "main.go"},
		// --chmod, rename on copy.
		"usr/local/bin/tool": {typ: reg, mode: 0o755, content: "#!/bin/sh\necho tool\n"},
		// Symbolic --chmod, on the source's 0644.
		"docs/symbolic": {typ: reg, mode: 0o700, content: "a\n"},
		// Globs.
		"docs/a.txt": {typ: reg, mode: 0o644, content: "a\n"},
		"docs/b.txt": {typ: reg, mode: 0o644, content: "b\n"},
		// COPY keeps an archive as it is; ADD extracts it, keeping its owners.
		"opt/extracted/pkg/readme.txt": {typ: reg, mode: 0o640, uid: 7, gid: 8, content: "from the archive\n"},
		// .dockerignore with an exception.
		"ctx/docs/keep.md": {typ: reg, mode: 0o644, content: "keep\n"},
		// COPY --from a stage (owners kept), a heredoc with expansion.
		"srv/assets/logo.svg":   {typ: reg, mode: 0o644, uid: 1000, gid: 1000, content: "<svg/>"},
		"srv/assets/inline.txt": {typ: reg, mode: 0o644, content: "inline 2.0 \"quoted\"\n"},
		// COPY --from=0 (stage index) and --from=<image>.
		"etc/copied-release": {typ: reg, mode: 0o644, content: testenv.BusyboxRelease},
		"from-image/group":   {typ: reg, mode: 0o644, content: testenv.BusyboxGroup},
		// WORKDIR after USER: created owned by the user.
		"app/sub": {typ: dirT, mode: 0o755, uid: 1000, gid: 1000},
	})
	if _, ok := tree["opt/archive.tar.gz"]; !ok {
		t.Error("COPY of a tar archive must keep the archive itself")
	}
	for _, p := range []string{"ctx/secret.txt", "ctx/docs/c.md", "docs/c.md", "x"} {
		if _, ok := tree[p]; ok {
			t.Errorf("%s is in the image; it is excluded or belongs to a stage the target does not need", p)
		}
	}
	if _, ok := tree["ctx/Dockerfile"]; !ok {
		t.Error("COPY . must copy the whole context, Dockerfile included")
	}

	cf := configOf(t, img)
	c := cf.Config
	env := map[string]string{}
	for _, kv := range c.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if env["APP"] != "/app" || env["GREETING"] != "hello world" || env["PATH"] == "" {
		t.Errorf("Env = %q", c.Env)
	}
	if _, ok := env["VERSION"]; ok {
		t.Errorf("ARG VERSION leaked into the image Env: %q", c.Env)
	}
	wantLabels := map[string]string{"base": "busybox", "version": "2.0", "team": "kiln", "extra": "yes"}
	for k, v := range wantLabels {
		if c.Labels[k] != v {
			t.Errorf("label %s = %q, want %q (labels %v)", k, c.Labels[k], v, c.Labels)
		}
	}
	if c.User != "app" || c.WorkingDir != "/app/sub" || c.StopSignal != "SIGTERM" || cf.Author != "kiln team" {
		t.Errorf("User=%q WorkingDir=%q StopSignal=%q Author=%q", c.User, c.WorkingDir, c.StopSignal, cf.Author)
	}
	ports := slices.Sorted(func(yield func(string) bool) {
		for p := range c.ExposedPorts {
			if !yield(p) {
				return
			}
		}
	})
	if !slices.Equal(ports, []string{"8080/tcp", "9000/udp", "9001/udp"}) {
		t.Errorf("ExposedPorts = %v", ports)
	}
	if _, ok := c.Volumes["/data"]; !ok || len(c.Volumes) != 1 {
		t.Errorf("Volumes = %v", c.Volumes)
	}
	hc := c.Healthcheck
	if hc == nil || !slices.Equal(hc.Test, []string{"CMD-SHELL", "wget -q localhost:8080"}) ||
		hc.Interval != 30*time.Second || hc.Timeout != 5*time.Second || hc.StartPeriod != 2*time.Second || hc.Retries != 3 {
		t.Errorf("Healthcheck = %+v", hc)
	}
	if !slices.Equal(c.Shell, []string{"/bin/sh", "-ec"}) {
		t.Errorf("Shell = %q", c.Shell)
	}
	if !slices.Equal(c.Cmd, []string{"/bin/sh", "-ec", "echo run"}) {
		t.Errorf("Cmd = %q: shell form must use SHELL, and an ENTRYPOINT after it must keep it", c.Cmd)
	}
	if !slices.Equal(c.Entrypoint, []string{"/usr/local/bin/tool"}) {
		t.Errorf("Entrypoint = %q", c.Entrypoint)
	}
	if !slices.Equal(c.OnBuild, []string{"COPY . /onbuild"}) {
		t.Errorf("OnBuild = %q", c.OnBuild)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}

	// History: one entry per instruction, a layer exactly where a step
	// changed files, and the base image's history first.
	layers, _ := img.Layers()
	nonEmpty := 0
	for _, h := range cf.History {
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	if nonEmpty != len(layers) || len(cf.RootFS.DiffIDs) != len(layers) {
		t.Errorf("%d non-empty history entries and %d diff_ids for %d layers", nonEmpty, len(cf.RootFS.DiffIDs), len(layers))
	}
	baseCfg := configOf(t, testenv.Pull(t, base))
	if len(cf.History) < len(baseCfg.History) || cf.History[0].CreatedBy != baseCfg.History[0].CreatedBy {
		t.Errorf("the image's history does not start with the base image's")
	}
	var created []string
	for _, h := range cf.History[len(baseCfg.History):] {
		created = append(created, h.CreatedBy)
	}
	for _, w := range []string{
		"ENV APP=/app GREETING=hello world",
		"ARG VERSION=2.0",
		"WORKDIR /app",
		"COPY --chown=app:staff src/ ./src/ # buildkit",
		"COPY --chmod=0755 bin/tool.sh /usr/local/bin/tool # buildkit",
		"USER app",
		`CMD ["/bin/sh" "-ec" "echo run"]`,
	} {
		if !slices.Contains(created, w) {
			t.Errorf("history lacks %q; it has:\n%s", w, strings.Join(created, "\n"))
		}
	}
}

func TestOnBuildTriggersRunInChild(t *testing.T) {
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "onbuild-base", testenv.WithOnBuild("COPY trigger.txt /triggered.txt", "LABEL triggered=yes"))
	dir := writeContext(t, map[string]string{
		"Dockerfile":  "FROM " + base + "\nCOPY after.txt /after.txt\n",
		"trigger.txt": "fired\n",
		"after.txt":   "after\n",
	})
	kiln(t, dir, nil, "build", "--progress=plain", "--push", "-t", host+"/child:1", ".")
	img := testenv.Pull(t, host+"/child:1")
	tree := testenv.Tree(t, img)
	checkTree(t, tree, map[string]want{
		"triggered.txt": {typ: tar.TypeReg, mode: 0o644, content: "fired\n"},
		"after.txt":     {typ: tar.TypeReg, mode: 0o644, content: "after\n"},
	})
	c := configOf(t, img).Config
	if len(c.OnBuild) != 0 {
		t.Errorf("OnBuild = %q: triggers fire once and are not inherited", c.OnBuild)
	}
	if c.Labels["triggered"] != "yes" {
		t.Errorf("labels %v: the LABEL trigger did not run", c.Labels)
	}
}

// A fresh checkout has new mtimes; with SOURCE_DATE_EPOCH the digest must
// not change, and created times are the epoch.
func TestReproducibleWithSourceDateEpoch(t *testing.T) {
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	files := map[string]string{
		"Dockerfile": "FROM " + base + " AS b\nWORKDIR /w\nCOPY . .\nFROM scratch\nCOPY --from=b /w /w\nCOPY <<EOF /note\nhi\nEOF\n",
		"a.txt":      "a\n",
		"dir/b.txt":  "b\n",
		"dir/link":   "symlink:b.txt",
	}
	src := writeContext(t, files)
	epoch := []string{"SOURCE_DATE_EPOCH=1700000000"}
	var digests []string
	for i, mtime := range []time.Time{time.Unix(1710000000, 0), time.Unix(1720000000, 0)} {
		dir := copyDir(t, src, mtime)
		res := kiln(t, dir, epoch, "build", "--progress=quiet", "--push", "-t", host+"/repro:"+string(rune('a'+i)), ".")
		digests = append(digests, strings.TrimSpace(res.Stdout))
	}
	if digests[0] != digests[1] || !strings.HasPrefix(digests[0], "sha256:") {
		t.Fatalf("digests differ between two builds of the same inputs: %q", digests)
	}
	cf := configOf(t, testenv.Pull(t, host+"/repro:a"))
	if !cf.Created.Time.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("created = %v, want the epoch", cf.Created.Time)
	}
	for _, h := range cf.History {
		if !h.Created.Time.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("history %q created %v, want the epoch", h.CreatedBy, h.Created.Time)
		}
	}
	// Without the epoch, a different mtime is a different image.
	a := kiln(t, copyDir(t, src, time.Unix(1710000000, 0)), nil, "build", "--progress=quiet", ".")
	if strings.TrimSpace(a.Stdout) == digests[0] {
		t.Errorf("a build without SOURCE_DATE_EPOCH matched the clamped digest")
	}
	_ = v1.Hash{}
}
