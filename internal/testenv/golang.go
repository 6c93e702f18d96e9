package testenv

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// GoRoot is where GoImage puts the Go toolchain, as the golang images do.
const GoRoot = "/usr/local/go"

// The toolchain layer is the same for every call in a process.
var goLayer struct {
	once sync.Once
	gz   []byte
	err  error
}

// GoImage pushes host/repo:latest: the busybox image with the host's Go
// toolchain at /usr/local/go (its compiler, linker and standard library
// sources; tests and docs left out) and Go's environment, standing in for
// the golang image a cross-compiling stage starts FROM. Only for the
// host's architecture: it is what FROM --platform=$BUILDPLATFORM pulls.
func GoImage(t testing.TB, host, repo string) (ref string, digest v1.Hash) {
	t.Helper()
	goBin := Need(t, "go")
	goLayer.once.Do(func() {
		out, err := exec.Command(goBin, "env", "GOROOT").Output()
		if err != nil {
			goLayer.err = fmt.Errorf("go env GOROOT: %w", err)
			return
		}
		goLayer.gz, goLayer.err = toolchainLayer(strings.TrimSpace(string(out)))
	})
	if goLayer.err != nil {
		t.Fatalf("testenv: GoImage: %v", goLayer.err)
	}
	gz := goLayer.gz
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		t.Fatalf("testenv: GoImage: %v", err)
	}
	return BusyboxImage(t, host, repo, WithLayers(layer), WithConfig(func(c *v1.Config) {
		c.Env = []string{"PATH=" + GoRoot + "/bin:" + BusyboxPath, "GOROOT=" + GoRoot,
			"GOTOOLCHAIN=local", "GOFLAGS=", "CGO_ENABLED=0", "GOCACHE=/tmp/go-build", "GOPATH=/tmp/go"}
	}))
}

// toolchainLayer tars what `go build` needs of goroot, under GoRoot: bin,
// pkg/tool, pkg/include, the standard library's sources without tests and
// testdata, go.env, VERSION.
func toolchainLayer(goroot string) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	for _, d := range []string{"usr/", "usr/local/", "usr/local/go/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: BusyboxEpoch}); err != nil {
			return nil, err
		}
	}
	for _, top := range []string{"VERSION", "go.env", "bin", "pkg/include", "pkg/tool", "src"} {
		root := filepath.Join(goroot, top)
		if _, err := os.Stat(root); err != nil {
			continue // go.env is newer than some toolchains
		}
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || p == filepath.Join(goroot, "src", "cmd")) {
				return filepath.SkipDir // the go command and its tools are prebuilt
			}
			if strings.HasSuffix(d.Name(), "_test.go") {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(goroot, p)
			if fi.Mode()&fs.ModeSymlink != 0 {
				return nil // none that build needs
			}
			hdr, err := tar.FileInfoHeader(fi, "")
			if err != nil {
				return err
			}
			hdr.Name = "usr/local/go/" + filepath.ToSlash(rel)
			if fi.IsDir() {
				hdr.Name += "/"
			}
			hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
			hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = BusyboxEpoch, BusyboxEpoch, BusyboxEpoch
			hdr.Format = tar.FormatPAX
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if fi.Mode().IsRegular() {
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				_, err = io.Copy(tw, f)
				f.Close()
				return err
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("go toolchain layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
