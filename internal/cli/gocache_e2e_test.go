package cli_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/testenv"
)

// goLayer is the host's Go toolchain as an image layer under
// /usr/local/go: the go command, the three tools a CGO_ENABLED=0 build
// runs, and the standard library's sources (no tests, no testdata), so a
// base image can run go build without Docker Hub.
var goLayer struct {
	once sync.Once
	gz   []byte
	err  error
}

func goToolchainLayer(t *testing.T) v1.Layer {
	t.Helper()
	goBin := testenv.Need(t, "go")
	goLayer.once.Do(func() { goLayer.gz, goLayer.err = buildGoLayer(goBin) })
	if goLayer.err != nil {
		t.Fatalf("go toolchain layer: %v", goLayer.err)
	}
	gz := goLayer.gz
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func buildGoLayer(goBin string) ([]byte, error) {
	out, err := exec.Command(goBin, "env", "GOROOT", "GOHOSTOS", "GOHOSTARCH").Output()
	if err != nil {
		return nil, err
	}
	f := strings.Fields(string(out))
	root, tools := f[0], filepath.Join("pkg", "tool", f[1]+"_"+f[2])
	keep := func(rel string, d fs.DirEntry) bool {
		switch {
		case rel == "." || rel == "VERSION" || rel == "go.env" || rel == "bin" || rel == "bin/go" || rel == "pkg" || rel == "pkg/tool" || rel == tools:
			return true
		case strings.HasPrefix(rel, tools+"/"):
			b := filepath.Base(rel)
			return b == "compile" || b == "link" || b == "asm"
		case rel == "pkg/include" || strings.HasPrefix(rel, "pkg/include/"):
			return true
		case rel == "src" || strings.HasPrefix(rel, "src/"):
			return !strings.HasPrefix(rel, "src/cmd/") && d.Name() != "testdata" && !strings.HasSuffix(rel, "_test.go")
		}
		return false
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	for _, d := range []string{"usr/", "usr/local/"} {
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: testenv.BusyboxEpoch}); err != nil {
			return nil, err
		}
	}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if !keep(rel, d) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.Join("usr/local/go", rel), Mode: int64(fi.Mode().Perm()), ModTime: testenv.BusyboxEpoch}
		switch {
		case d.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
			return tw.WriteHeader(h)
		case !fi.Mode().IsRegular():
			return nil
		}
		h.Typeflag, h.Size = tar.TypeReg, fi.Size()
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		r, err := os.Open(p)
		if err != nil {
			return err
		}
		defer r.Close()
		_, err = io.Copy(tw, r)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// goModule is a main package over two library packages; a's version
// string is what the test changes.
func goModule(dockerfile, version string) map[string]string {
	return map[string]string{
		"Dockerfile": dockerfile,
		"go.mod":     "module example.com/m\n\ngo 1.22\n",
		"main.go":    "package main\n\nimport (\n\t\"example.com/m/a\"\n\t\"example.com/m/b\"\n)\n\nfunc main() { println(a.Version(), b.Name()) }\n",
		"a/a.go":     "package a\n\nfunc Version() string { return \"" + version + "\" }\n",
		"b/b.go":     "package b\n\nfunc Name() string { return \"b\" }\n",
	}
}

func goDockerfile(base, mountID string) string {
	return "FROM " + base + "\n" +
		"ENV GOROOT=/usr/local/go PATH=/usr/local/go/bin:" + testenv.BusyboxPath + " HOME=/root " +
		"CGO_ENABLED=0 GOFLAGS=-mod=mod GOPROXY=off GOTOOLCHAIN=local GOCACHE=/root/.cache/go-build\n" +
		"WORKDIR /src\nCOPY . .\n" +
		"RUN --mount=type=cache,id=" + mountID + ",target=/root/.cache/go-build go build -v -o /app . && echo compiled-end\n"
}

// compiled is the packages go build -v listed as compiled in the RUN's
// output: one import path per line, alone (plain progress may prefix it).
func compiled(out string) []string {
	re := regexp.MustCompile(`(?m)(?:^|\s)((?:example\.com/m(?:/[ab])?)|runtime|internal/[a-z/]+)\s*$`)
	seen := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		seen[m[1]] = true
	}
	var pkgs []string
	for p := range seen {
		pkgs = append(pkgs, p)
	}
	sort.Strings(pkgs)
	return pkgs
}

// The Go tool itself says the restored build cache was used: after one
// package's file changes, a fresh runner's go build -v, with the go-build
// cache mount restored from --cache-from, compiles only that package and
// main, which imports it; the untouched package and the standard library
// come from the mount. A mount that was not restored (another id) compiles
// everything again, which the same assertion would catch.
func TestRestoredGoBuildCacheCompilesOnlyTheChange(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "gobase", testenv.WithLayers(goToolchainLayer(t)))
	cacheRef := reg + "/gocache/app:cache"
	build := func(version, mountID string, args ...string) []string {
		t.Helper()
		src := writeContext(t, goModule(goDockerfile(base, mountID), version))
		dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
		res := kiln(t, dir, env, append([]string{"build", "--progress=plain"}, append(args, ".")...)...)
		if !strings.Contains(res.Stderr, "compiled-end") {
			t.Fatalf("the RUN output is not in the plain progress:\n%s", res.Stderr)
		}
		return compiled(res.Stderr)
	}

	first := build("v1", "gobuild", "--cache-to", "type=registry,ref="+cacheRef+",mode=max")
	if !slices.Contains(first, "runtime") || !slices.Contains(first, "example.com/m/b") {
		t.Fatalf("a cold build did not compile the standard library and b: %v", first)
	}

	second := build("v2", "gobuild", "--cache-from", "type=registry,ref="+cacheRef)
	if want := []string{"example.com/m", "example.com/m/a"}; strings.Join(second, " ") != strings.Join(want, " ") {
		t.Errorf("after a change to package a, go build compiled %v, want only %v", second, want)
	}

	// The control: the same change with a mount the cache does not hold.
	other := build("v2", "othercache", "--cache-from", "type=registry,ref="+cacheRef)
	if !slices.Contains(other, "example.com/m/b") || !slices.Contains(other, "runtime") {
		t.Errorf("without the restored mount go build compiled only %v; the assertion above proves nothing", other)
	}
}
