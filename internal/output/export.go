package output

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-build/kiln/internal/registry"
)

// Image is what a build produced and an output consumes.
type Image struct {
	Image v1.Image
	// Index, instead of Image, is an image index: one image per platform,
	// and attestation manifests beside them. type=docker takes its only
	// platform image (an engine's classic store holds no indexes, and
	// BuildKit's docker exporter drops attestations too); several
	// platforms are refused there.
	Index v1.ImageIndex
	// Tags are the -t values, as given.
	Tags []string
	// Rootfs writes the final root filesystem into dir (for type=local).
	Rootfs func(ctx context.Context, dir string) error
}

// Env is the machine-wide context an export runs in.
type Env struct {
	Registry registry.Options
	// StoreDir is kiln's local image store, an OCI layout, used by type
	// "store" (the default when no output is given).
	StoreDir string
	// BlobDir, when set, is a directory of verified blobs named by hex
	// digest (kiln's cache) that the store hard-links instead of copying.
	BlobDir string
	// DockerHost is the engine for type=docker without dest; "" means
	// $DOCKER_HOST or unix:///var/run/docker.sock.
	DockerHost string
	// TempTag goes into the names of the temporary siblings written next
	// to a dest before the rename (TempPattern), so that the leftovers of
	// a killed export are told apart from another export's: kiln passes
	// the build's id.
	TempTag string
}

// Result describes what was exported.
type Result struct {
	Digest       v1.Hash // manifest digest
	ConfigDigest v1.Hash
	Size         int64 // manifest + config + layers, compressed
	// Names are the image names the export used: pushed refs, RepoTags,
	// index.json names, normalized as docker does.
	Names []string
}

// ErrNoName is returned when an output needs an image name and neither -t
// nor name= gave one.
var ErrNoName = errors.New("no image name: give -t NAME or name=NAME")

// Export writes img to spec and reports what it wrote.
func Export(ctx context.Context, spec Spec, img Image, env Env) (Result, error) {
	var t top
	switch {
	case img.Index != nil:
		t = img.Index
	case img.Image != nil:
		t = img.Image
	case spec.Type != TypeLocal:
		return Result{}, fmt.Errorf("export %s: no image", spec.Type)
	}
	names, err := NormalizeNames(append(append([]string(nil), img.Tags...), spec.Names...))
	if err != nil {
		return Result{}, fmt.Errorf("export %s: %w", spec.Type, err)
	}
	var res Result
	if t != nil {
		if res, err = describe(t); err != nil {
			return Result{}, fmt.Errorf("export %s: %w", spec.Type, err)
		}
	}
	res.Names = names

	switch spec.Type {
	case TypeRegistry:
		if len(names) == 0 {
			return Result{}, fmt.Errorf("export registry: %w", ErrNoName)
		}
		if _, err := registry.Push(ctx, t, names, env.Registry); err != nil {
			return Result{}, fmt.Errorf("export registry: %w", err)
		}
	case TypeOCI:
		err = exportOCI(ctx, spec, t, names, env.TempTag)
	case TypeDocker:
		one := img.Image
		if img.Index != nil {
			if one, err = platformImage(img.Index); err != nil {
				return Result{}, fmt.Errorf("export docker: %w", err)
			}
			if res, err = describe(one); err != nil {
				return Result{}, fmt.Errorf("export docker: %w", err)
			}
			res.Names = names
		}
		if spec.Dest == "" {
			err = loadDocker(ctx, env.DockerHost, one, names)
		} else {
			err = writeFileWith(spec.Dest, env.TempTag, func(w io.Writer) error {
				return writeDockerTar(w, one, names)
			})
		}
	case TypeLocal:
		if img.Rootfs == nil {
			return Result{}, errors.New("export local: the build has no root filesystem to write")
		}
		err = fillDir(spec.Dest, env.TempTag, func(dir string) error { return img.Rootfs(ctx, dir) })
	case TypeStore:
		if env.StoreDir == "" {
			return Result{}, errors.New("export store: no store directory configured")
		}
		err = writeLayoutDir(ctx, env.StoreDir, t, names, true, env.BlobDir)
	default:
		return Result{}, fmt.Errorf("export: unknown output type %q", spec.Type)
	}
	if err != nil {
		return Result{}, fmt.Errorf("export %s: %w", spec.Type, err)
	}
	return res, nil
}

// exportOCI writes an OCI layout tar, or a layout directory (merged into
// an existing one, as BuildKit's content store does) with tar=false.
func exportOCI(ctx context.Context, spec Spec, img top, names []string, tag string) error {
	if spec.Tar {
		return writeFileWith(spec.Dest, tag, func(w io.Writer) error {
			return writeLayoutTar(ctx, w, img, names)
		})
	}
	if _, err := os.Stat(spec.Dest); err == nil {
		return writeLayoutDir(ctx, spec.Dest, img, names, false, "")
	}
	return fillDir(filepath.Clean(spec.Dest), tag, func(dir string) error {
		return writeLayoutDir(ctx, dir, img, names, false, "")
	})
}

// describe computes the digest of t and the compressed size of
// everything it names, each blob once (an index's children included).
func describe(t top) (Result, error) {
	d, err := t.Digest()
	if err != nil {
		return Result{}, fmt.Errorf("computing manifest digest: %w", err)
	}
	blobs, err := blobsOf(t)
	if err != nil {
		return Result{}, err
	}
	var size int64
	for _, b := range blobs {
		size += b.size
	}
	res := Result{Digest: d, Size: size}
	if img, ok := t.(v1.Image); ok {
		m, err := img.Manifest()
		if err != nil {
			return Result{}, fmt.Errorf("reading manifest: %w", err)
		}
		res.ConfigDigest = m.Config.Digest
	}
	return res, nil
}

// platformImage is the one image of idx that is not an attestation: what
// type=docker loads. Several platforms cannot be loaded as one image.
func platformImage(idx v1.ImageIndex) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading index: %w", err)
	}
	var found []v1.Descriptor
	for _, m := range im.Manifests {
		if m.MediaType.IsImage() && (m.Platform == nil || m.Platform.OS != "unknown") {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%w: the image has %d platforms; the docker exporter loads one (build one --platform, or use type=oci or type=registry)", ErrMultiPlatform, len(found))
	}
	return idx.Image(found[0].Digest)
}

// ErrMultiPlatform: an output that holds one platform's image was given
// several.
var ErrMultiPlatform = errors.New("multi-platform image")
