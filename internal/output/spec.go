package output

import (
	"encoding/csv"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/distribution/reference"
)

// Output types. TypeStore is kiln's own: the default when no --output is
// given, and what buildx's "type=image" without push means here.
const (
	TypeRegistry = "registry"
	TypeOCI      = "oci"
	TypeDocker   = "docker"
	TypeLocal    = "local"
	TypeStore    = "store"
)

// Compressions accepted by the compression attribute.
const (
	CompressionGzip         = "gzip"
	CompressionZstd         = "zstd"
	CompressionUncompressed = "uncompressed"
)

// ErrInvalidSpec classifies every Parse error.
var ErrInvalidSpec = errors.New("invalid --output")

// Spec is one parsed --output value.
type Spec struct {
	Type string // one of the Type constants
	// Dest is the file (oci, docker) or directory (oci with Tar=false,
	// local) to write; empty for registry and store, and for docker when
	// the image is loaded into the engine.
	Dest string
	// Tar is false only for type=oci,tar=false: write a layout directory.
	Tar bool
	// Names are the name= attribute's image names, normalized like docker
	// ("app" becomes "docker.io/library/app:latest").
	Names []string
	// Compression of new layers: gzip (default), zstd or uncompressed.
	Compression string
	// CompressionLevel is the compression-level attribute; -1 when unset.
	CompressionLevel int
	// ForceCompression recompresses layers taken from a base image too.
	ForceCompression bool
	// OCIMediaTypes selects OCI rather than Docker media types. Defaults to
	// true for type=oci and false otherwise, as in buildx.
	OCIMediaTypes bool
	// Push is true for type=registry and type=image,push=true.
	Push bool
	// Attrs holds every key=value given (keys lower-cased), "type" and
	// "dest" excluded.
	Attrs map[string]string
}

// knownAttrs are the attributes kiln honours, per type.
var knownAttrs = map[string]bool{
	"name": true, "push": true, "compression": true, "compression-level": true,
	"oci-mediatypes": true, "force-compression": true, "tar": true,
}

// Parse parses one --output value in buildx syntax: comma-separated
// key=value fields, CSV-quoted when a value holds a comma
// (`type=image,"name=a,b",push=true`). A value without "=" is
// shorthand for type=local,dest=VALUE.
func Parse(s string) (Spec, error) {
	spec := Spec{Tar: true, CompressionLevel: -1, Attrs: map[string]string{}}
	if strings.TrimSpace(s) == "" {
		return Spec{}, fmt.Errorf("%w: empty value", ErrInvalidSpec)
	}
	if s == "-" {
		return Spec{}, fmt.Errorf("%w: writing to stdout (-) is not supported; use type=oci,dest=FILE or type=docker,dest=FILE", ErrInvalidSpec)
	}
	fields, err := csv.NewReader(strings.NewReader(s)).Read()
	if err != nil {
		return Spec{}, fmt.Errorf("%w %q: %w", ErrInvalidSpec, s, err)
	}
	if len(fields) == 1 && !strings.Contains(s, "=") {
		spec.Type, spec.Dest, fields = TypeLocal, s, nil
	}
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Spec{}, fmt.Errorf("%w %q: field %q is not key=value", ErrInvalidSpec, s, f)
		}
		k = strings.ToLower(strings.TrimSpace(k))
		switch k {
		case "type":
			spec.Type = v
		case "dest":
			spec.Dest = v
		default:
			spec.Attrs[k] = v
		}
	}
	if err := spec.resolve(); err != nil {
		return Spec{}, fmt.Errorf("%w %q: %w", ErrInvalidSpec, s, err)
	}
	return spec, nil
}

// resolve validates the raw fields and fills the typed ones.
func (spec *Spec) resolve() error {
	switch spec.Type {
	case "":
		return errors.New("type is required (registry, oci, docker, local, image)")
	case TypeRegistry:
		spec.Push = true
		if v, ok := spec.Attrs["push"]; ok {
			b, err := parseBool("push", v)
			if err != nil {
				return err
			}
			if !b {
				return errors.New("type=registry always pushes; use type=image to keep the image local")
			}
		}
	case "image":
		push, err := boolAttr(spec.Attrs, "push", false)
		if err != nil {
			return err
		}
		spec.Push = push
		spec.Type = TypeStore
		if push {
			spec.Type = TypeRegistry
		}
	case TypeOCI, TypeDocker, TypeLocal, TypeStore:
	case "tar":
		return errors.New("type=tar is not supported yet; use type=local,dest=DIR")
	case "cacheonly":
		return errors.New("type=cacheonly is not supported")
	default:
		return fmt.Errorf("unknown type %q (want registry, image, oci, docker or local)", spec.Type)
	}

	var unknown []string
	for k := range spec.Attrs {
		if !knownAttrs[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("unknown attribute(s) %s for type=%s", strings.Join(unknown, ", "), spec.Type)
	}
	if _, ok := spec.Attrs["tar"]; ok && spec.Type != TypeOCI {
		return fmt.Errorf("attribute tar applies only to type=oci")
	}
	if _, ok := spec.Attrs["push"]; ok && spec.Type != TypeRegistry && spec.Type != TypeStore {
		return fmt.Errorf("attribute push applies only to type=image and type=registry")
	}

	var err error
	if spec.Tar, err = boolAttr(spec.Attrs, "tar", true); err != nil {
		return err
	}
	if spec.OCIMediaTypes, err = boolAttr(spec.Attrs, "oci-mediatypes", spec.Type == TypeOCI); err != nil {
		return err
	}
	if spec.ForceCompression, err = boolAttr(spec.Attrs, "force-compression", false); err != nil {
		return err
	}
	spec.Compression = CompressionGzip
	if v, ok := spec.Attrs["compression"]; ok {
		switch v {
		case CompressionGzip, CompressionZstd, CompressionUncompressed:
			spec.Compression = v
		case "estargz":
			return errors.New("compression=estargz is not supported (gzip, zstd or uncompressed)")
		default:
			return fmt.Errorf("unknown compression %q (gzip, zstd or uncompressed)", v)
		}
	}
	if v, ok := spec.Attrs["compression-level"]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("compression-level %q is not a non-negative integer", v)
		}
		max := map[string]int{CompressionGzip: 9, CompressionZstd: 22, CompressionUncompressed: 0}[spec.Compression]
		if n > max {
			return fmt.Errorf("compression-level %d is out of range for %s (0-%d)", n, spec.Compression, max)
		}
		spec.CompressionLevel = n
	}
	if v, ok := spec.Attrs["name"]; ok {
		if spec.Names, err = NormalizeNames(strings.Split(v, ",")); err != nil {
			return err
		}
	}

	switch spec.Type {
	case TypeOCI:
		if spec.Dest == "" {
			return errors.New("dest is required for type=oci")
		}
	case TypeLocal:
		if spec.Dest == "" {
			return errors.New("dest is required for type=local")
		}
	case TypeRegistry, TypeStore:
		if spec.Dest != "" {
			return fmt.Errorf("dest does not apply to type=%s", spec.Type)
		}
	}
	if spec.Dest == "-" {
		return errors.New("writing to stdout (dest=-) is not supported; give a file name")
	}
	return nil
}

// NormalizeNames turns image names into docker's canonical tagged form
// ("app" → "docker.io/library/app:latest"), as BuildKit's exporters name
// images. Empty entries are dropped; duplicates are kept once.
func NormalizeNames(names []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		named, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			return nil, fmt.Errorf("image name %q: %w", n, err)
		}
		full := reference.TagNameOnly(named).String()
		if !seen[full] {
			seen[full] = true
			out = append(out, full)
		}
	}
	return out, nil
}

func boolAttr(attrs map[string]string, key string, def bool) (bool, error) {
	v, ok := attrs[key]
	if !ok {
		return def, nil
	}
	return parseBool(key, v)
}

func parseBool(key, v string) (bool, error) {
	if v == "" {
		return true, nil // buildx: a bare "push=" or "tar=" means true
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s=%q is not a boolean", key, v)
	}
	return b, nil
}
