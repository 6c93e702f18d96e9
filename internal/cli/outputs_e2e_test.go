package cli_test

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/testenv"
)

const outputsDockerfile = `FROM scratch AS a
COPY a.txt /a.txt
FROM scratch
COPY --from=a /a.txt /from-a.txt
COPY b/ /b/
ENV K=v
CMD ["/b/run"]
`

func outputsContext(t *testing.T) string {
	return writeContext(t, map[string]string{
		"Dockerfile": outputsDockerfile,
		"a.txt":      "A\n",
		"b/run":      "#!/bin/sh\n",
		"b/data.txt": "data\n",
	})
}

// One build, four outputs: every one holds the same image (or its files).
func TestOutputs(t *testing.T) {
	dir := outputsContext(t)
	out := t.TempDir()
	ociTar, ociDir := filepath.Join(out, "img.oci.tar"), filepath.Join(out, "oci")
	dockerTar, rootfs := filepath.Join(out, "img.docker.tar"), filepath.Join(out, "rootfs")
	res := kiln(t, dir, nil, "build", "--progress=plain", "-t", "example.test/app:v1",
		"-o", "type=oci,dest="+ociTar,
		"-o", "type=oci,dest="+ociDir+",tar=false",
		"-o", "type=docker,dest="+dockerTar,
		"-o", "type=local,dest="+rootfs, ".")
	printed := strings.Fields(res.Stdout)[0]

	// OCI layout directory: index names the tag; OCI media types.
	idx, err := layout.ImageIndexFromPath(ociDir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("oci index: %v, %d manifests", err, len(im.Manifests))
	}
	desc := im.Manifests[0]
	if desc.Digest.String() != printed {
		t.Errorf("oci layout holds %s, kiln printed %s", desc.Digest, printed)
	}
	if desc.Annotations["org.opencontainers.image.ref.name"] != "v1" {
		t.Errorf("oci annotations %v", desc.Annotations)
	}
	ociImg, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := ociImg.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("type=oci media type %s, want OCI (buildx default for oci)", mt)
	}
	checkTree(t, testenv.Tree(t, ociImg), map[string]want{
		"from-a.txt": {typ: tar.TypeReg, mode: 0o644, content: "A\n"},
		"b/run":      {typ: tar.TypeReg, mode: 0o644, content: "#!/bin/sh\n"},
	})

	// OCI tarball: the same index.json inside.
	indexJSON := tarMember(t, ociTar, "index.json")
	if !bytes.Contains(indexJSON, []byte(printed)) {
		t.Errorf("oci tarball index.json does not name %s: %s", printed, indexJSON)
	}

	// Docker tarball: loadable by tag, with the config kiln built.
	tag, _ := name.NewTag("example.test/app:v1")
	dimg, err := tarball.ImageFromPath(dockerTar, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf := configOf(t, dimg)
	if len(cf.Config.Cmd) != 1 || cf.Config.Cmd[0] != "/b/run" {
		t.Errorf("docker tarball config Cmd = %q", cf.Config.Cmd)
	}
	if mt, _ := dimg.MediaType(); mt != types.DockerManifestSchema2 {
		t.Errorf("type=docker media type %s", mt)
	}

	// Local: the final filesystem only.
	if got := readFile(t, filepath.Join(rootfs, "b/data.txt")); got != "data\n" {
		t.Errorf("local output b/data.txt = %q", got)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "a.txt")); err == nil {
		t.Error("local output holds a file of an intermediate stage")
	}
}

func tarMember(t *testing.T, path, member string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s has no %s: %v", path, member, err)
		}
		if strings.TrimPrefix(h.Name, "./") == member {
			var b bytes.Buffer
			if _, err := b.ReadFrom(tr); err != nil {
				t.Fatal(err)
			}
			return b.Bytes()
		}
	}
}

// zstd and OCI media types as output options reach the layers.
func TestOutputZstd(t *testing.T) {
	dir := outputsContext(t)
	ociDir := filepath.Join(t.TempDir(), "oci")
	kiln(t, dir, nil, "build", "--progress=quiet", "-o", "type=oci,dest="+ociDir+",tar=false,compression=zstd", ".")
	p, err := layout.FromPath(ociDir)
	if err != nil {
		t.Fatal(err)
	}
	idx, _ := p.ImageIndex()
	im, _ := idx.IndexManifest()
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	for _, l := range m.Layers {
		if l.MediaType != types.OCILayerZStd {
			t.Errorf("layer media type %s, want zstd", l.MediaType)
		}
	}
	checkTree(t, testenv.Tree(t, img), map[string]want{"b/data.txt": {typ: tar.TypeReg, mode: 0o644, content: "data\n"}})
}

// With no output flag the image lands in kiln's store and its digest and
// size are printed.
func TestDefaultOutputIsStore(t *testing.T) {
	dir := outputsContext(t)
	res := kiln(t, dir, nil, "build", "--progress=plain", "-t", "app:dev", ".")
	fields := strings.Fields(res.Stdout)
	if len(fields) < 3 || !strings.HasPrefix(fields[0], "sha256:") || fields[2] != "bytes" {
		t.Fatalf("stdout %q: want digest and size", res.Stdout)
	}
	store := filepath.Join(testenv.Home(t), ".cache", "kiln", "images")
	idx, err := layout.ImageIndexFromPath(store)
	if err != nil {
		t.Fatalf("kiln's store at %s: %v", store, err)
	}
	h, _ := v1.NewHash(fields[0])
	if _, err := idx.Image(h); err != nil {
		t.Errorf("store does not hold the printed digest %s: %v", h, err)
	}
	if !strings.Contains(res.Stderr, "COPY b/ /b/") || !strings.Contains(res.Stderr, "DONE") {
		t.Errorf("plain progress lacks step lines:\n%s", res.Stderr)
	}
}

// -f - reads the Dockerfile from standard input; a Dockerfile-specific
// ignore file wins over .dockerignore.
func TestDockerfileFromStdinAndSpecificIgnore(t *testing.T) {
	dir := writeContext(t, map[string]string{
		"keep.txt":                          "keep",
		"drop-general.txt":                  "g",
		"drop-specific.txt":                 "s",
		".dockerignore":                     "drop-general.txt\n",
		"build/app.Dockerfile":              "FROM scratch\nCOPY . /ctx/\n",
		"build/app.Dockerfile.dockerignore": "drop-specific.txt\n",
	})
	ociDir := filepath.Join(t.TempDir(), "oci")
	kiln(t, dir, nil, "build", "--progress=quiet", "-f", "build/app.Dockerfile", "-o", "type=oci,dest="+ociDir+",tar=false", ".")
	tree := treeFromLayout(t, ociDir)
	if _, ok := tree["ctx/drop-specific.txt"]; ok {
		t.Error("the Dockerfile-specific ignore file was not applied")
	}
	if _, ok := tree["ctx/drop-general.txt"]; !ok {
		t.Error(".dockerignore applied although a Dockerfile-specific one exists")
	}

	cmd := exec.Command(testenv.Kiln(t), "build", "--progress=quiet", "-f", "-", "-o", "type=oci,dest="+ociDir+"2,tar=false", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+t.TempDir())
	cmd.Stdin = strings.NewReader("FROM scratch\nCOPY keep.txt /from-stdin.txt\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kiln -f -: %v\n%s", err, out)
	}
	tree = treeFromLayout(t, ociDir+"2")
	if e, ok := tree["from-stdin.txt"]; !ok || string(e.Content) != "keep" {
		t.Errorf("Dockerfile from stdin not built: %v", tree)
	}
	if _, ok := tree["ctx/drop-general.txt"]; ok {
		t.Error("with -f - the context's .dockerignore still applies")
	}
}

func treeFromLayout(t *testing.T, dir string) map[string]testenv.Entry {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return testenv.Tree(t, img)
}

// -o type=docker (and --load) load the image into a real Docker Engine.
func TestLoadIntoDocker(t *testing.T) {
	docker := testenv.Need(t, "docker")
	if err := exec.Command(docker, "version").Run(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no Docker Engine reachable (CI=true): %v", err)
		}
		t.Skipf("no Docker Engine reachable: %v", err)
	}
	dir := outputsContext(t)
	tag := "kiln-e2e-load:" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))
	res := kiln(t, dir, nil, "build", "--progress=plain", "--load", "-t", tag, "--iidfile", filepath.Join(dir, "iid"), ".")
	_ = res
	t.Cleanup(func() { exec.Command(docker, "rmi", "-f", tag).Run() })
	out, err := exec.Command(docker, "image", "inspect", tag).Output()
	if err != nil {
		t.Fatalf("docker image inspect %s: %v", tag, err)
	}
	var inspect []struct {
		ID     string
		Config struct{ Env, Cmd []string }
	}
	if err := json.Unmarshal(out, &inspect); err != nil || len(inspect) != 1 {
		t.Fatalf("inspect output: %v %s", err, out)
	}
	if inspect[0].ID != readFile(t, filepath.Join(dir, "iid")) {
		t.Errorf("docker has image %s, --iidfile says %s", inspect[0].ID, readFile(t, filepath.Join(dir, "iid")))
	}
	if len(inspect[0].Config.Cmd) != 1 || inspect[0].Config.Cmd[0] != "/b/run" {
		t.Errorf("loaded Cmd = %q", inspect[0].Config.Cmd)
	}
}
