package attest

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/distribution/reference"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ImagePURL returns the package URL BuildKit writes for image reference
// ref resolved for platform (util/purl RefToPURL): the familiar name split
// into namespace and name, the tag as version ("latest" when there is
// neither tag nor digest), a digest qualifier for a reference with a
// digest, and a platform qualifier unless platform is the zero value.
//
//	docker.io/library/busybox:latest -> pkg:docker/busybox@latest?platform=linux%2Famd64
//	docker.io/user/app:1             -> pkg:docker/user/app@1?platform=linux%2Famd64
//	localhost:5000/a/b:2             -> pkg:docker/localhost:5000/a/b@2?platform=linux%2Famd64
//	busybox@sha256:…                 -> pkg:docker/busybox?digest=sha256:…&platform=linux%2Famd64
//
// It names images both in resolvedDependencies and as statement subjects.
func ImagePURL(ref string, platform v1.Platform) (string, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", fmt.Errorf("attest: image %q: %w", ref, err)
	}
	var quals [][2]string
	if c, ok := named.(reference.Canonical); ok {
		quals = append(quals, [2]string{"digest", c.Digest().String()})
	} else {
		named = reference.TagNameOnly(named)
	}
	version := ""
	if t, ok := named.(reference.Tagged); ok {
		version = t.Tag()
	}
	if platform.OS != "" || platform.Architecture != "" {
		quals = append(quals, [2]string{"platform", format(normalize(platform))})
	}
	// packageurl-go writes qualifiers sorted by key.
	slices.SortFunc(quals, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })

	var b strings.Builder
	b.WriteString("pkg:docker")
	// Each namespace segment and the name are percent-encoded on their
	// own, so the slashes between them stay.
	for seg := range strings.SplitSeq(reference.FamiliarName(named), "/") {
		b.WriteByte('/')
		escape(&b, seg)
	}
	if version != "" {
		b.WriteByte('@')
		escape(&b, version)
	}
	for i, q := range quals {
		b.WriteByte("?&"[min(i, 1)])
		escape(&b, q[0])
		b.WriteByte('=')
		escape(&b, q[1])
	}
	return b.String(), nil
}

// Subjects returns the statement subjects BuildKit gives a platform image:
// one per name it is exported under (buildx's -t, or the exporter's
// name=), each a purl for platform with the image manifest's digest.
// No names, no subjects.
func Subjects(names []string, platform v1.Platform, manifest v1.Hash) ([]Subject, error) {
	out := []Subject{}
	for _, name := range names {
		uri, err := ImagePURL(name, platform)
		if err != nil {
			return nil, err
		}
		out = append(out, Subject{Name: uri, Digest: digestSet(manifest)})
	}
	return out, nil
}

// escape percent-encodes s as packageurl-go v0.1.7 does for every purl
// component: only letters, digits and -._~: are left as they are.
func escape(b *strings.Builder, s string) {
	const hex = "0123456789ABCDEF"
	for i := range len(s) {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~:", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&0xf])
	}
}

// normalize is containerd's platforms.Normalize, the spelling BuildKit
// writes platforms in: lower case, aliases folded (x86_64 is amd64,
// aarch64 is arm64), arm64/v8 written arm64 and arm written arm/v7.
func normalize(p v1.Platform) v1.Platform {
	p.OS = strings.ToLower(p.OS)
	if p.OS == "macos" {
		p.OS = "darwin"
	}
	arch, variant := strings.ToLower(p.Architecture), strings.ToLower(p.Variant)
	switch arch {
	case "i386":
		arch, variant = "386", ""
	case "x86_64", "x86-64", "amd64":
		arch = "amd64"
		if variant == "v1" {
			variant = ""
		}
	case "aarch64", "arm64":
		arch = "arm64"
		switch variant {
		case "8", "v8", "v8.0":
			variant = ""
		case "9", "9.0", "v9.0":
			variant = "v9"
		}
	case "armhf":
		arch, variant = "arm", "v7"
	case "armel":
		arch, variant = "arm", "v6"
	case "arm":
		switch variant {
		case "", "7":
			variant = "v7"
		case "5", "6", "8":
			variant = "v" + variant
		}
	}
	p.Architecture, p.Variant = arch, variant
	if len(p.OSFeatures) > 0 {
		fs := slices.Compact(slices.Sorted(slices.Values(p.OSFeatures)))
		p.OSFeatures = slices.DeleteFunc(fs, func(f string) bool { return f == "" })
	}
	return p
}

// normalizeIfSet normalizes p unless it is the zero platform, which
// stays "no platform".
func normalizeIfSet(p v1.Platform) v1.Platform {
	if p.OS == "" && p.Architecture == "" {
		return p
	}
	return normalize(p)
}

// format is containerd's platforms.Format: os/arch[/variant], no OS
// version.
func format(p v1.Platform) string {
	if p.OS == "" {
		return "unknown"
	}
	return path.Join(p.OS, p.Architecture, p.Variant)
}

// formatAll is containerd's platforms.FormatAll, which BuildKit uses for
// targetPlatform: format with the OS version and features in parentheses
// after the OS, as Windows images carry them. (containerd also escapes
// characters an OS version never has; that is left out.)
func formatAll(p v1.Platform) string {
	if p.OS == "" {
		return "unknown"
	}
	os := p.OS
	features := strings.Join(p.OSFeatures, "+")
	if p.OSVersion != "" || features != "" {
		os += "(" + p.OSVersion
		if features != "" {
			os += "+" + features
		}
		os += ")"
	}
	return path.Join(os, p.Architecture, p.Variant)
}
