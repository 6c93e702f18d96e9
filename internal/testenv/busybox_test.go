package testenv

import (
	"archive/tar"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestBusyboxImage(t *testing.T) {
	host := Registry(t)
	ref, digest := BusyboxImage(t, host, "base/busybox")
	if want := host + "/base/busybox:latest"; ref != want {
		t.Errorf("ref = %q, want %q", ref, want)
	}

	img := Pull(t, ref)
	if d, _ := img.Digest(); d != digest {
		t.Errorf("pulled digest %s, BusyboxImage returned %s", d, digest)
	}
	if mt, _ := img.MediaType(); mt != types.DockerManifestSchema2 {
		t.Errorf("manifest media type %s, want %s", mt, types.DockerManifestSchema2)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.DockerConfigJSON {
		t.Errorf("config media type %s", m.Config.MediaType)
	}
	if len(m.Layers) != 1 || m.Layers[0].MediaType != types.DockerLayer {
		t.Errorf("layers %+v, want one %s", m.Layers, types.DockerLayer)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture == "" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	if !slices.Equal(cf.Config.Env, []string{"PATH=" + BusyboxPath}) {
		t.Errorf("Env = %q", cf.Config.Env)
	}
	if !slices.Equal(cf.Config.Cmd, []string{"sh"}) {
		t.Errorf("Cmd = %q", cf.Config.Cmd)
	}
	if cf.Config.Labels["base"] != "busybox" {
		t.Errorf("Labels = %v", cf.Config.Labels)
	}
	if len(cf.Config.OnBuild) != 0 {
		t.Errorf("OnBuild = %q, want none", cf.Config.OnBuild)
	}

	tree := Tree(t, img)
	tests := []struct {
		path string
		want Entry
	}{
		{"bin", Entry{Type: tar.TypeDir, Mode: 0o755}},
		{"bin/sh", Entry{Type: tar.TypeSymlink, Mode: 0o777, Linkname: "/bin/busybox"}},
		{"bin/ls", Entry{Type: tar.TypeSymlink, Mode: 0o777, Linkname: "/bin/busybox"}},
		{"bin/echo", Entry{Type: tar.TypeSymlink, Mode: 0o777, Linkname: "/bin/busybox"}},
		{"etc/passwd", Entry{Type: tar.TypeReg, Mode: 0o644, Content: []byte(BusyboxPasswd)}},
		{"etc/group", Entry{Type: tar.TypeReg, Mode: 0o644, Content: []byte(BusyboxGroup)}},
		{"etc/base-release", Entry{Type: tar.TypeReg, Mode: 0o644, Content: []byte(BusyboxRelease)}},
		{"tmp", Entry{Type: tar.TypeDir, Mode: 0o1777}},
		{"root", Entry{Type: tar.TypeDir, Mode: 0o700}},
		{"home/app", Entry{Type: tar.TypeDir, Mode: 0o755, UID: 1000, GID: 1000}},
	}
	for _, tt := range tests {
		got, ok := tree[tt.path]
		if !ok {
			t.Errorf("%s missing from image", tt.path)
			continue
		}
		if !entryEqual(got, tt.want) {
			t.Errorf("%s = %s, want %s", tt.path, describe(got), describe(tt.want))
		}
	}
	bb := tree["bin/busybox"]
	if bb.Type != tar.TypeReg || bb.Mode != 0o755 || len(bb.Content) < 100_000 {
		t.Errorf("bin/busybox = %s", describe(bb))
	}
}

func TestBusyboxImageDeterministic(t *testing.T) {
	host := Registry(t)
	_, d1 := BusyboxImage(t, host, "a")
	_, d2 := BusyboxImage(t, host, "b")
	if d1 != d2 {
		t.Errorf("same inputs gave digests %s and %s", d1, d2)
	}
	// A second registry: nothing cached between them but the process.
	_, d3 := BusyboxImage(t, Registry(t), "a")
	if d3 != d1 {
		t.Errorf("second registry got digest %s, first %s", d3, d1)
	}
}

func TestBusyboxImageOptions(t *testing.T) {
	host := Registry(t)
	_, plain := BusyboxImage(t, host, "opts")
	ref, digest := BusyboxImage(t, host, "opts",
		WithTag("onbuild"),
		WithOnBuild("RUN echo triggered", "ENV X=1"),
		WithConfig(func(c *v1.Config) { c.User = "app" }),
	)
	if want := host + "/opts:onbuild"; ref != want {
		t.Errorf("ref = %q, want %q", ref, want)
	}
	if digest == plain {
		t.Errorf("options did not change the digest")
	}
	cf, err := Pull(t, ref).ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"RUN echo triggered", "ENV X=1"}; !slices.Equal(cf.Config.OnBuild, want) {
		t.Errorf("OnBuild = %q, want %q", cf.Config.OnBuild, want)
	}
	if cf.Config.User != "app" {
		t.Errorf("User = %q, want app", cf.Config.User)
	}
	// The plain tag is untouched.
	if d, _ := Pull(t, host+"/opts:latest").Digest(); d != plain {
		t.Errorf("latest moved to %s", d)
	}
}
