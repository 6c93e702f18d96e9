package attest

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestImagePURL pins ImagePURL to BuildKit's purl.RefToPURL; each
// expectation was checked against BuildKit v0.34.2's own function when
// written.
func TestImagePURL(t *testing.T) {
	const dgst = "sha256:ea7e2b4d5e3f1b3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d"
	for _, tc := range []struct {
		ref      string
		platform v1.Platform
		want     string
	}{
		{"docker.io/library/busybox:latest", amd64, "pkg:docker/busybox@latest?platform=linux%2Famd64"},
		{"busybox", amd64, "pkg:docker/busybox@latest?platform=linux%2Famd64"},
		{"index.docker.io/library/alpine:3", amd64, "pkg:docker/alpine@3?platform=linux%2Famd64"},
		{"docker.io/user/app:v1", amd64, "pkg:docker/user/app@v1?platform=linux%2Famd64"},
		{"user/app", v1.Platform{}, "pkg:docker/user/app@latest"},
		{"localhost:5000/a/b:2", amd64, "pkg:docker/localhost:5000/a/b@2?platform=linux%2Famd64"},
		{"ghcr.io/o/r/s:t", arm64, "pkg:docker/ghcr.io/o/r/s@t?platform=linux%2Farm64"},
		{"[::1]:5000/x:y", amd64, "pkg:docker/%5B::1%5D:5000/x@y?platform=linux%2Famd64"},
		// Only docker.io is shortened: its other spellings are other hosts.
		{"registry-1.docker.io/library/alpine", amd64, "pkg:docker/registry-1.docker.io/library/alpine@latest?platform=linux%2Famd64"},
		// A digest reference has no version unless it also has a tag.
		{"busybox@" + dgst, amd64, "pkg:docker/busybox?digest=" + dgst + "&platform=linux%2Famd64"},
		{"busybox:1@" + dgst, amd64, "pkg:docker/busybox@1?digest=" + dgst + "&platform=linux%2Famd64"},
		{"busybox@" + dgst, v1.Platform{}, "pkg:docker/busybox?digest=" + dgst},
		// Platforms are normalized as containerd does.
		{"busybox", v1.Platform{OS: "linux", Architecture: "arm"}, "pkg:docker/busybox@latest?platform=linux%2Farm%2Fv7"},
		{"busybox", v1.Platform{OS: "linux", Architecture: "aarch64", Variant: "v8"}, "pkg:docker/busybox@latest?platform=linux%2Farm64"},
		{"busybox", v1.Platform{OS: "Linux", Architecture: "x86_64"}, "pkg:docker/busybox@latest?platform=linux%2Famd64"},
		// The OS version is not part of a purl's platform.
		{"busybox", v1.Platform{OS: "windows", Architecture: "amd64", OSVersion: "10.0.1"}, "pkg:docker/busybox@latest?platform=windows%2Famd64"},
	} {
		got, err := ImagePURL(tc.ref, tc.platform)
		if err != nil {
			t.Errorf("ImagePURL(%q): %v", tc.ref, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ImagePURL(%q, %v)\n got %s\nwant %s", tc.ref, tc.platform, got, tc.want)
		}
	}
	if _, err := ImagePURL("Not/A/Valid/Ref", amd64); err == nil {
		t.Error("ImagePURL of an invalid reference succeeded")
	}
}

func TestSubjects(t *testing.T) {
	h := hash(t, "manifest")
	got, err := Subjects([]string{"me/app:1", "registry.example/me/app:1"}, arm64, h)
	if err != nil {
		t.Fatal(err)
	}
	want := []Subject{
		{Name: "pkg:docker/me/app@1?platform=linux%2Farm64", Digest: map[string]string{"sha256": h.Hex}},
		{Name: "pkg:docker/registry.example/me/app@1?platform=linux%2Farm64", Digest: map[string]string{"sha256": h.Hex}},
	}
	if len(got) != len(want) {
		t.Fatalf("Subjects = %v, want %v", got, want)
	}
	for i := range want {
		if got[i].Name != want[i].Name || got[i].Digest["sha256"] != want[i].Digest["sha256"] || len(got[i].Digest) != 1 {
			t.Errorf("subject %d = %v, want %v", i, got[i], want[i])
		}
	}
	none, err := Subjects(nil, arm64, h)
	if err != nil || none == nil || len(none) != 0 {
		t.Errorf("Subjects(nil) = %#v, %v; want an empty, non-nil list", none, err)
	}
}

func TestFormatAll(t *testing.T) {
	for p, want := range map[*v1.Platform]string{
		{OS: "linux", Architecture: "arm", Variant: "v7"}:                                 "linux/arm/v7",
		{OS: "windows", Architecture: "amd64", OSVersion: "10.0.17763.1234"}:              "windows(10.0.17763.1234)/amd64",
		{OS: "windows", Architecture: "amd64", OSFeatures: []string{"b", "a"}}:            "windows(+a+b)/amd64",
		{OS: "windows", Architecture: "amd64", OSVersion: "1", OSFeatures: []string{"a"}}: "windows(1+a)/amd64",
	} {
		if got := formatAll(normalize(*p)); got != want {
			t.Errorf("formatAll(%v) = %q, want %q", *p, got, want)
		}
	}
}
