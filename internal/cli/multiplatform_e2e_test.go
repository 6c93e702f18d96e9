package cli_test

import (
	"bytes"
	"debug/elf"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-build/kiln/internal/testenv"
)

// multiDockerfile cross-compiles on the build platform, as BuildKit users
// write it, then runs a step per target platform: the arm64 one through
// QEMU.
const multiDockerfile = `FROM --platform=$BUILDPLATFORM golang AS build
ARG TARGETOS TARGETARCH
COPY hello.go /src/
RUN uname -m > /built-on && GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -o /out/hello /src/hello.go

FROM busybox
ARG TARGETPLATFORM BUILDPLATFORM
COPY --from=build /out/hello /usr/local/bin/hello
COPY --from=build /built-on /built-on
RUN uname -m > /arch && hello > /hello.out 2>&1 && echo "$TARGETPLATFORM on $BUILDPLATFORM" > /platforms
`

const helloGo = `package main

import "runtime"

func main() { println("hello from", runtime.GOARCH) }
`

// A two-platform build pushes one index of two images, each with its own
// architecture's files: the base image's platform, a RUN that ran as that
// architecture, and a binary cross-compiled natively in a stage on
// $BUILDPLATFORM. A second build from the same cache hits every step.
func TestMultiPlatformBuildPushesAnIndex(t *testing.T) {
	host := testenv.Registry(t)
	base, _, baseImages := testenv.BusyboxIndex(t, host, "busybox", []string{"amd64", "arm64"})
	golang, _ := testenv.GoImage(t, host, "golang")
	df := strings.NewReplacer("FROM busybox", "FROM "+base, "golang AS", golang+" AS").Replace(multiDockerfile)
	dir := writeContext(t, map[string]string{"Dockerfile": df, "hello.go": helloGo})
	ref := host + "/multi:v1"
	local := filepath.Join(t.TempDir(), "rootfs")
	res := kiln(t, dir, nil, "build", "--progress=plain", "--platform", "linux/amd64,linux/arm64",
		"-t", ref, "--push", "-o", "type=local,dest="+local, ".")
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		if !strings.Contains(res.Stderr, "["+p+" ") {
			t.Errorf("progress names no step of %s:\n%s", p, res.Stderr)
		}
	}

	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(r)
	if err != nil {
		t.Fatalf("the pushed image is not an index: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("the index has %d manifests, want 2: %+v", len(im.Manifests), im.Manifests)
	}
	want := map[string]struct{ uname, machine string }{
		"amd64": {"x86_64", elf.EM_X86_64.String()},
		"arm64": {"aarch64", elf.EM_AARCH64.String()},
	}
	for i, arch := range []string{"amd64", "arm64"} {
		m := im.Manifests[i]
		if m.Platform == nil || m.Platform.OS != "linux" || m.Platform.Architecture != arch {
			t.Errorf("manifest %d has platform %v, want linux/%s (in --platform order)", i, m.Platform, arch)
			continue
		}
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != arch || cf.OS != "linux" {
			t.Errorf("%s: config says %s/%s", arch, cf.OS, cf.Architecture)
		}
		layers, _ := img.Layers()
		baseLayers, _ := testenv.Pull(t, host+"/busybox@"+baseImages[arch].String()).Layers()
		if d0, _ := layers[0].Digest(); len(baseLayers) == 0 || d0 != mustDigest(t, baseLayers[0]) {
			t.Errorf("%s: the image does not start with the %s busybox layer", arch, arch)
		}
		tree := testenv.Tree(t, img)
		check := func(path, content string) {
			t.Helper()
			if got := string(tree[path].Content); got != content {
				t.Errorf("%s: /%s = %q, want %q", arch, path, got, content)
			}
		}
		check("arch", want[arch].uname+"\n")
		check("hello.out", "hello from "+arch+"\n")
		check("platforms", "linux/"+arch+" on linux/amd64\n")
		check("built-on", "x86_64\n") // the compile ran natively
		f, err := elf.NewFile(bytes.NewReader(tree["usr/local/bin/hello"].Content))
		if err != nil {
			t.Fatalf("%s: hello: %v", arch, err)
		}
		if f.Machine.String() != want[arch].machine {
			t.Errorf("%s: hello is built for %s", arch, f.Machine)
		}
		// type=local splits by platform, as BuildKit does.
		got, err := os.ReadFile(filepath.Join(local, "linux_"+arch, "arch"))
		if err != nil || string(got) != want[arch].uname+"\n" {
			t.Errorf("type=local: linux_%s/arch = %q, %v", arch, got, err)
		}
	}

	// The same build again: every step of both platforms hits.
	report := filepath.Join(t.TempDir(), "report.json")
	kiln(t, dir, nil, "build", "--platform", "linux/amd64,linux/arm64", "-t", ref, "--push", "--report", report, ".")
	rep := readReport(t, report)
	if rep.Totals.Steps == 0 || rep.Totals.Cached != rep.Totals.Steps {
		t.Errorf("rebuild: %d of %d steps cached, want all", rep.Totals.Cached, rep.Totals.Steps)
	}
	again, err := remote.Index(r)
	if err != nil {
		t.Fatal(err)
	}
	if d1, d2 := mustIndexDigest(t, idx), mustIndexDigest(t, again); d1 != d2 {
		t.Errorf("the cached rebuild pushed another index: %s, then %s", d1, d2)
	}
}

func mustDigest(t *testing.T, l v1.Layer) v1.Hash {
	t.Helper()
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func mustIndexDigest(t *testing.T, idx v1.ImageIndex) v1.Hash {
	t.Helper()
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}
