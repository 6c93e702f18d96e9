package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BusyboxEpoch is the fixed time stamped on every file and on the config of
// the busybox base image, so repeated builds give the same digest.
var BusyboxEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// BusyboxPath is the value of PATH in the busybox image config (Docker's
// default PATH).
const BusyboxPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Contents of the base image's fixed files, exported so tests can compare.
const (
	BusyboxPasswd = "root:x:0:0:root:/root:/bin/sh\n" +
		"app:x:1000:1000:app:/home/app:/bin/sh\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
	BusyboxGroup = "root:x:0:\n" +
		"staff:x:50:\n" +
		"app:x:1000:\n" +
		"nogroup:x:65534:\n"
	BusyboxRelease = "kiln-testenv busybox base 1\n"
)

// ImageOption changes the busybox image before it is pushed.
type ImageOption func(*imageOptions)

type imageOptions struct {
	arch    string // GOARCH of the busybox binary; "" is the host's
	tag     string
	onBuild []string
	config  []func(*v1.Config)
	layers  []v1.Layer
}

// WithLayers appends layers above the busybox layer (gzip Docker layers:
// a base as registries serve them).
func WithLayers(ls ...v1.Layer) ImageOption {
	return func(o *imageOptions) { o.layers = append(o.layers, ls...) }
}

// WithOnBuild sets the image's ONBUILD triggers (Dockerfile instructions).
func WithOnBuild(triggers ...string) ImageOption {
	return func(o *imageOptions) { o.onBuild = append(o.onBuild, triggers...) }
}

// WithArch builds the image for another architecture (a Go name:
// "arm64"), from Debian's busybox-static of that architecture
// (ForeignBusybox). Its RUN steps need QEMU user emulation.
func WithArch(arch string) ImageOption {
	return func(o *imageOptions) { o.arch = arch }
}

// WithTag pushes to host/repo:tag instead of host/repo:latest.
func WithTag(tag string) ImageOption {
	return func(o *imageOptions) { o.tag = tag }
}

// WithConfig edits the image config (Env, User, Labels, ...) after the
// defaults are set.
func WithConfig(edit func(*v1.Config)) ImageOption {
	return func(o *imageOptions) { o.config = append(o.config, edit) }
}

// BusyboxImage builds a small base image from the host's static busybox and
// pushes it to host/repo:latest (Docker schema2 media types, gzip layer) over
// plain HTTP. It returns the tag reference and the manifest digest. The
// image is deterministic: the same busybox binary and options always give
// the same digest.
//
// Contents: /bin/busybox with every applet it lists as a symlink
// /bin/APPLET -> /bin/busybox (including /bin/sh); /etc/passwd
// (BusyboxPasswd), /etc/group (BusyboxGroup), /etc/base-release
// (BusyboxRelease); /tmp (1777), /root (0700), /home/app (1000:1000), and
// empty /dev, /proc, /sys, /usr/bin, /usr/sbin, /usr/local/bin, /sbin, /var.
// Config: Env PATH=BusyboxPath, Cmd ["sh"], Labels {"base": "busybox"}.
func BusyboxImage(t testing.TB, host, repo string, opts ...ImageOption) (ref string, digest v1.Hash) {
	t.Helper()
	o := imageOptions{tag: "latest"}
	for _, opt := range opts {
		opt(&o)
	}
	img, err := busyboxImage(t, o)
	if err != nil {
		t.Fatalf("testenv: BusyboxImage: %v", err)
	}
	ref = host + "/" + repo + ":" + o.tag
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatalf("testenv: BusyboxImage: parse %q: %v", ref, err)
	}
	if err := remote.Write(tag, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("testenv: BusyboxImage: push %s: %v", ref, err)
	}
	digest, err = img.Digest()
	if err != nil {
		t.Fatalf("testenv: BusyboxImage: digest: %v", err)
	}
	return ref, digest
}

func busyboxImage(t testing.TB, o imageOptions) (v1.Image, error) {
	t.Helper()
	layer, err := busyboxLayer(t, o.arch)
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.DockerManifestSchema2)
	img = mutate.ConfigMediaType(img, types.DockerConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.DockerLayer,
		History: v1.History{
			Created:   v1.Time{Time: BusyboxEpoch},
			CreatedBy: "kiln testenv: busybox base",
			Comment:   "built by internal/testenv",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	for _, l := range o.layers {
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:     l,
			MediaType: types.DockerLayer,
			History:   v1.History{Created: v1.Time{Time: BusyboxEpoch}, CreatedBy: "kiln testenv: extra layer"},
		})
		if err != nil {
			return nil, fmt.Errorf("append layer: %w", err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Architecture = runtime.GOARCH
	if o.arch != "" {
		cf.Architecture = o.arch
	}
	cf.OS = "linux"
	cf.Created = v1.Time{Time: BusyboxEpoch}
	cf.Config = v1.Config{
		Env:     []string{"PATH=" + BusyboxPath},
		Cmd:     []string{"sh"},
		Labels:  map[string]string{"base": "busybox"},
		OnBuild: o.onBuild,
	}
	for _, edit := range o.config {
		edit(&cf.Config)
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

// The layer is the same for every call in a process; build it once per
// architecture.
var busybox struct {
	mu     sync.Mutex
	layers map[string][]byte // gzip'd, by GOARCH
}

func busyboxLayer(t testing.TB, arch string) (v1.Layer, error) {
	t.Helper()
	if arch == "" {
		arch = runtime.GOARCH
	}
	var bin string
	if arch == runtime.GOARCH {
		bin = Need(t, "busybox")
	} else {
		bin = ForeignBusybox(t, arch)
	}
	busybox.mu.Lock()
	gz, ok := busybox.layers[arch]
	if !ok {
		var err error
		if gz, err = buildBusyboxLayer(bin); err != nil {
			busybox.mu.Unlock()
			return nil, err
		}
		if busybox.layers == nil {
			busybox.layers = map[string][]byte{}
		}
		busybox.layers[arch] = gz
	}
	busybox.mu.Unlock()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	return layer, nil
}

// ForeignDir holds Debian's static busybox for other architectures, one
// directory per Go architecture name (ForeignDir/arm64/bin/busybox), as
// .ci/run unpacks busybox-static:ARCH there.
const ForeignDir = "/usr/local/lib/kiln-testenv"

// ForeignBusybox is the static busybox for arch (a Go name: "arm64"),
// and checks that this machine runs it through QEMU user emulation. When
// either is missing the test is skipped, or failed when CI=true.
func ForeignBusybox(t testing.TB, arch string) string {
	t.Helper()
	bin := ForeignDir + "/" + arch + "/bin/busybox"
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	if _, err := os.Stat(bin); err != nil {
		fail("testenv: %s busybox: %v (.ci/run unpacks Debian's busybox-static:%s there)", arch, err, arch)
		return ""
	}
	if out, err := exec.Command(bin, "true").CombinedOutput(); err != nil {
		fail("testenv: %s busybox does not run here (install qemu-user-static and binfmt-support): %v: %s", arch, err, out)
		return ""
	}
	return bin
}

// BusyboxIndex pushes a multi-platform busybox image to host/repo:tag
// (a Docker manifest list, as Docker Hub serves busybox): one busybox
// image per architecture, in order, each as BusyboxImage makes it with
// opts. It returns the reference, the list's digest and each platform
// image's digest by architecture.
func BusyboxIndex(t testing.TB, host, repo string, archs []string, opts ...ImageOption) (ref string, digest v1.Hash, images map[string]v1.Hash) {
	t.Helper()
	o := imageOptions{tag: "latest"}
	for _, opt := range opts {
		opt(&o)
	}
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	images = map[string]v1.Hash{}
	for _, arch := range archs {
		po := o
		po.arch = arch
		img, err := busyboxImage(t, po)
		if err != nil {
			t.Fatalf("testenv: BusyboxIndex: %s: %v", arch, err)
		}
		if images[arch], err = img.Digest(); err != nil {
			t.Fatalf("testenv: BusyboxIndex: %v", err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	ref = host + "/" + repo + ":" + o.tag
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatalf("testenv: BusyboxIndex: parse %q: %v", ref, err)
	}
	if err := remote.WriteIndex(tag, idx, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("testenv: BusyboxIndex: push %s: %v", ref, err)
	}
	if digest, err = idx.Digest(); err != nil {
		t.Fatalf("testenv: BusyboxIndex: digest: %v", err)
	}
	return ref, digest, images
}

// buildBusyboxLayer writes the base filesystem as a gzip'd tar with fixed
// times, owners and order.
func buildBusyboxLayer(bin string) ([]byte, error) {
	if err := checkStatic(bin); err != nil {
		return nil, err
	}
	binary, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	out, err := exec.Command(bin, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)

	type file struct {
		hdr     tar.Header
		content []byte
	}
	dir := func(n string, mode int64, uid, gid int) file {
		return file{hdr: tar.Header{Typeflag: tar.TypeDir, Name: n + "/", Mode: mode, Uid: uid, Gid: gid}}
	}
	reg := func(n string, mode int64, content []byte) file {
		return file{hdr: tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: mode, Size: int64(len(content))}, content: content}
	}
	files := []file{
		dir("bin", 0o755, 0, 0),
		reg("bin/busybox", 0o755, binary),
	}
	for _, a := range applets {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		files = append(files, file{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "/bin/busybox", Mode: 0o777}})
	}
	files = append(files,
		dir("dev", 0o755, 0, 0),
		dir("etc", 0o755, 0, 0),
		reg("etc/base-release", 0o644, []byte(BusyboxRelease)),
		reg("etc/group", 0o644, []byte(BusyboxGroup)),
		reg("etc/passwd", 0o644, []byte(BusyboxPasswd)),
		dir("home", 0o755, 0, 0),
		dir("home/app", 0o755, 1000, 1000),
		dir("proc", 0o755, 0, 0),
		dir("root", 0o700, 0, 0),
		dir("sbin", 0o755, 0, 0),
		dir("sys", 0o755, 0, 0),
		dir("tmp", 0o1777, 0, 0),
		dir("usr", 0o755, 0, 0),
		dir("usr/bin", 0o755, 0, 0),
		dir("usr/local", 0o755, 0, 0),
		dir("usr/local/bin", 0o755, 0, 0),
		dir("usr/sbin", 0o755, 0, 0),
		dir("var", 0o755, 0, 0),
	)

	var buf bytes.Buffer
	// Zero gzip header (no name, no mtime): same bytes every time.
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, f := range files {
		f.hdr.ModTime = BusyboxEpoch
		f.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&f.hdr); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.hdr.Name, err)
		}
		if _, err := tw.Write(f.content); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close tar: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("close gzip: %w", err)
	}
	return buf.Bytes(), nil
}

// checkStatic refuses a dynamically linked busybox: the image has no libc,
// so such a binary would fail inside it with a confusing "not found".
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", bin, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; install Debian's busybox-static", bin)
		}
	}
	return nil
}
