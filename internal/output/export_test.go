package output

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testenv"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kiln-build/kiln/internal/registry"
)

func mustRandom(t *testing.T) v1.Image {
	t.Helper()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// failingImage is an image whose last layer breaks while being read.
type failingImage struct{ v1.Image }

type failingLayer struct{ v1.Layer }

func (failingLayer) Compressed() (io.ReadCloser, error) { return nil, errors.New("disk on fire") }

func (f failingImage) Layers() ([]v1.Layer, error) {
	ls, err := f.Image.Layers()
	if err != nil {
		return nil, err
	}
	ls[len(ls)-1] = failingLayer{ls[len(ls)-1]}
	return ls, nil
}

// dirEntries lists dir's names, to prove no temporary was left behind.
func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// untar extracts a tar file into a new directory.
func untar(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// layoutNames maps io.containerd.image.name to digest for a layout.
func layoutNames(t *testing.T, dir string) (map[string]v1.Hash, []v1.Descriptor) {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]v1.Hash{}
	for _, m := range im.Manifests {
		got[m.Annotations[annotationImageName]] = m.Digest
	}
	return got, im.Manifests
}

func TestExportOCI(t *testing.T) {
	ctx := context.Background()
	img := mustRandom(t)
	want := digestOf(t, img)
	for _, tarred := range []bool{true, false} {
		t.Run(fmt.Sprintf("tar=%v", tarred), func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "out")
			spec := Spec{Type: TypeOCI, Dest: dest, Tar: tarred, Names: []string{"docker.io/library/extra:1"}}
			res, err := Export(ctx, spec, Image{Image: img, Tags: []string{"app:v1"}}, Env{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Digest != want {
				t.Errorf("Result.Digest = %s, want %s", res.Digest, want)
			}
			dir := dest
			if tarred {
				dir = untar(t, dest)
			}
			if got := dirEntries(t, dir); fmt.Sprint(got) != "[blobs index.json oci-layout]" {
				t.Errorf("layout holds %v, want exactly blobs, index.json, oci-layout", got)
			}
			names, descs := layoutNames(t, dir)
			wantNames := map[string]v1.Hash{"docker.io/library/app:v1": want, "docker.io/library/extra:1": want}
			if fmt.Sprint(names) != fmt.Sprint(wantNames) {
				t.Errorf("index names = %v, want %v", names, wantNames)
			}
			for _, d := range descs {
				if got := d.Annotations[annotationRefName]; got != "v1" && got != "1" {
					t.Errorf("ref.name = %q, want the tag only", got)
				}
			}
			back, err := layout.Path(dir).Image(want)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate.Image(back); err != nil {
				t.Errorf("layout image invalid: %v", err)
			}
		})
	}
}

func TestExportFailureLeavesNothing(t *testing.T) {
	ctx := context.Background()
	bad := failingImage{mustRandom(t)}
	tests := []Spec{
		{Type: TypeOCI, Tar: true},
		{Type: TypeOCI, Tar: false},
		{Type: TypeDocker},
	}
	for _, spec := range tests {
		t.Run(fmt.Sprintf("%s tar=%v", spec.Type, spec.Tar), func(t *testing.T) {
			parent := t.TempDir()
			spec.Dest = filepath.Join(parent, "out")
			_, err := Export(ctx, spec, Image{Image: bad, Tags: []string{"app:v1"}}, Env{})
			if err == nil || !strings.Contains(err.Error(), "disk on fire") {
				t.Fatalf("err = %v, want the layer's failure", err)
			}
			if left := dirEntries(t, parent); len(left) != 0 {
				t.Errorf("failed export left %v behind", left)
			}
		})
	}
}

func TestExportDockerTarball(t *testing.T) {
	ctx := context.Background()
	img := mustRandom(t)
	dest := filepath.Join(t.TempDir(), "img.tar")
	res, err := Export(ctx, Spec{Type: TypeDocker, Dest: dest}, Image{Image: img, Tags: []string{"app:v1", "127.0.0.1:5000/x/app"}}, Env{})
	if err != nil {
		t.Fatal(err)
	}
	wantNames := []string{"docker.io/library/app:v1", "127.0.0.1:5000/x/app:latest"}
	if fmt.Sprint(res.Names) != fmt.Sprint(wantNames) {
		t.Errorf("Names = %v, want %v", res.Names, wantNames)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(dest) })
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 1 {
		t.Fatalf("manifest.json has %d entries, want 1", len(m))
	}
	tags := append([]string(nil), m[0].RepoTags...)
	sort.Strings(tags)
	if want := []string{"127.0.0.1:5000/x/app:latest", "app:v1"}; fmt.Sprint(tags) != fmt.Sprint(want) {
		t.Errorf("RepoTags = %v, want %v (docker's familiar names)", tags, want)
	}
	tag, _ := name.NewTag("app:v1")
	back, err := tarball.ImageFromPath(dest, &tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(back); err != nil {
		t.Errorf("tarball image invalid: %v", err)
	}
	wantCfg, _ := img.ConfigName()
	if got, _ := back.ConfigName(); got != wantCfg {
		t.Errorf("config digest = %s, want %s", got, wantCfg)
	}
	if res.ConfigDigest != wantCfg {
		t.Errorf("Result.ConfigDigest = %s, want %s", res.ConfigDigest, wantCfg)
	}
}

func TestExportStoreReplacesRetaggedEntry(t *testing.T) {
	ctx := context.Background()
	store := filepath.Join(t.TempDir(), "store")
	a, b := mustRandom(t), mustRandom(t)
	steps := []struct {
		img  v1.Image
		tags []string
		want map[string]v1.Hash
	}{
		{a, []string{"app:v1", "app:v2"}, map[string]v1.Hash{"docker.io/library/app:v1": digestOf(t, a), "docker.io/library/app:v2": digestOf(t, a)}},
		{b, []string{"app:v1"}, map[string]v1.Hash{"docker.io/library/app:v1": digestOf(t, b), "docker.io/library/app:v2": digestOf(t, a)}},
		{b, []string{"app:v1"}, map[string]v1.Hash{"docker.io/library/app:v1": digestOf(t, b), "docker.io/library/app:v2": digestOf(t, a)}},
	}
	for i, s := range steps {
		if _, err := Export(ctx, Spec{Type: TypeStore}, Image{Image: s.img, Tags: s.tags}, Env{StoreDir: store}); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		got, descs := layoutNames(t, store)
		if fmt.Sprint(got) != fmt.Sprint(s.want) || len(descs) != len(s.want) {
			t.Errorf("step %d: index = %v (%d entries), want %v", i, got, len(descs), s.want)
		}
	}
	for _, h := range []v1.Hash{digestOf(t, a), digestOf(t, b)} {
		img, err := layout.Path(store).Image(h)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Errorf("stored image %s invalid: %v", h, err)
		}
	}
}

func TestExportLocal(t *testing.T) {
	ctx := context.Background()
	rootfs := func(_ context.Context, dir string) error {
		if err := os.MkdirAll(filepath.Join(dir, "etc"), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, "etc", "hostname"), []byte("kiln\n"), 0o644)
	}
	t.Run("new directory", func(t *testing.T) {
		dest := filepath.Join(t.TempDir(), "out")
		if _, err := Export(ctx, Spec{Type: TypeLocal, Dest: dest}, Image{Rootfs: rootfs}, Env{}); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(dest, "etc", "hostname")); err != nil || string(b) != "kiln\n" {
			t.Errorf("hostname = %q, %v", b, err)
		}
	})
	t.Run("existing directory keeps unrelated files", func(t *testing.T) {
		dest := t.TempDir()
		os.WriteFile(filepath.Join(dest, "keep"), []byte("x"), 0o644)
		if _, err := Export(ctx, Spec{Type: TypeLocal, Dest: dest}, Image{Rootfs: rootfs}, Env{}); err != nil {
			t.Fatal(err)
		}
		if got := dirEntries(t, dest); fmt.Sprint(got) != "[etc keep]" {
			t.Errorf("dest holds %v", got)
		}
	})
	t.Run("failure leaves nothing", func(t *testing.T) {
		parent := t.TempDir()
		failing := func(ctx context.Context, dir string) error {
			_ = rootfs(ctx, dir)
			return errors.New("extract failed")
		}
		_, err := Export(ctx, Spec{Type: TypeLocal, Dest: filepath.Join(parent, "out")}, Image{Rootfs: failing}, Env{})
		if err == nil {
			t.Fatal("no error")
		}
		if left := dirEntries(t, parent); len(left) != 0 {
			t.Errorf("left %v behind", left)
		}
	})
}

func TestExportRegistry(t *testing.T) {
	ctx := context.Background()
	host := testenv.Registry(t)
	img := mustRandom(t)
	spec, err := Parse(`type=image,push=true,"name=` + host + `/extra:1,` + host + `/extra:2"`)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Export(ctx, spec, Image{Image: img, Tags: []string{host + "/app:v1"}}, Env{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{host + "/app:v1", host + "/extra:1", host + "/extra:2"} {
		back, err := registry.Image(ctx, ref, v1.Platform{}, registry.Options{})
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		if d := digestOf(t, back); d != res.Digest {
			t.Errorf("%s = %s, want %s", ref, d, res.Digest)
		}
	}
	if _, err := Export(ctx, Spec{Type: TypeRegistry}, Image{Image: img}, Env{}); !errors.Is(err, ErrNoName) {
		t.Errorf("push without names: err = %v, want ErrNoName", err)
	}
}

func TestResultSizeAndUnnamedEntry(t *testing.T) {
	img := mustRandom(t)
	dest := filepath.Join(t.TempDir(), "l")
	res, err := Export(context.Background(), Spec{Type: TypeOCI, Tar: false, Dest: dest}, Image{Image: img}, Env{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := img.Manifest()
	raw, _ := img.RawManifest()
	want := int64(len(raw)) + m.Config.Size + m.Layers[0].Size + m.Layers[1].Size
	if res.Size != want {
		t.Errorf("Size = %d, want %d", res.Size, want)
	}
	// An unnamed image is indexed once, without name annotations, and
	// exporting it again does not duplicate the entry.
	if _, err := Export(context.Background(), Spec{Type: TypeOCI, Tar: false, Dest: dest}, Image{Image: img}, Env{}); err != nil {
		t.Fatal(err)
	}
	_, descs := layoutNames(t, dest)
	if len(descs) != 1 || len(descs[0].Annotations) != 0 || descs[0].MediaType != types.DockerManifestSchema2 {
		t.Errorf("index entries = %+v, want one unnamed docker manifest", descs)
	}
}

func TestExportStoreConcurrent(t *testing.T) {
	// Parallel builds sharing one store must all end up in its index.
	store := filepath.Join(t.TempDir(), "store")
	const n = 8
	errs := make(chan error, n)
	want := map[string]v1.Hash{}
	imgs := make([]v1.Image, n)
	for i := range imgs {
		imgs[i] = mustRandom(t)
		want[fmt.Sprintf("docker.io/library/app:%d", i)] = digestOf(t, imgs[i])
	}
	for i := range imgs {
		go func() {
			_, err := Export(context.Background(), Spec{Type: TypeStore}, Image{Image: imgs[i], Tags: []string{fmt.Sprintf("app:%d", i)}}, Env{StoreDir: store})
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := layoutNames(t, store); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("index = %v, want %v", got, want)
	}
}
