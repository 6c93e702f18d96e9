package output

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/distribution/reference"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-build/kiln/internal/ioctx"
	"github.com/kiln-build/kiln/internal/lock"
)

// Annotations BuildKit (through containerd's archive exporter) puts on
// index.json entries: the full image name, and the tag alone as the OCI
// spec defines ref.name.
const (
	annotationImageName = "io.containerd.image.name"
	annotationRefName   = "org.opencontainers.image.ref.name"
)

const ociLayoutFile = `{"imageLayoutVersion":"1.0.0"}`

// blob is one content-addressed file of an image.
type blob struct {
	digest v1.Hash
	size   int64
	open   func() (io.ReadCloser, error)
}

// top is what an output writes at its root: a v1.Image, or a
// v1.ImageIndex (several platforms, attestations).
type top interface {
	Digest() (v1.Hash, error)
	MediaType() (types.MediaType, error)
	RawManifest() ([]byte, error)
	Size() (int64, error)
}

// blobsOf lists every blob of t, each once: for an index, its own manifest
// first (its mtime is the store's record of use), then each child's.
func blobsOf(t top) ([]blob, error) {
	idx, ok := t.(v1.ImageIndex)
	if !ok {
		return imageBlobs(t.(v1.Image))
	}
	raw, err := idx.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("reading index: %w", err)
	}
	d, err := idx.Digest()
	if err != nil {
		return nil, fmt.Errorf("computing index digest: %w", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("reading index: %w", err)
	}
	out := []blob{bytesBlob(d, raw)}
	seen := map[v1.Hash]bool{d: true}
	for _, m := range im.Manifests {
		var child []blob
		switch {
		case m.MediaType.IsIndex():
			ci, err := idx.ImageIndex(m.Digest)
			if err != nil {
				return nil, fmt.Errorf("index child %s: %w", m.Digest, err)
			}
			child, err = blobsOf(ci)
			if err != nil {
				return nil, err
			}
		case m.MediaType.IsImage():
			img, err := idx.Image(m.Digest)
			if err != nil {
				return nil, fmt.Errorf("index child %s: %w", m.Digest, err)
			}
			child, err = imageBlobs(img)
			if err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("index child %s: unsupported media type %s", m.Digest, m.MediaType)
		}
		for _, b := range child {
			if !seen[b.digest] {
				seen[b.digest] = true
				out = append(out, b)
			}
		}
	}
	return out, nil
}

// imageBlobs lists the manifest, the config and the compressed layers of img.
func imageBlobs(img v1.Image) ([]blob, error) {
	rawManifest, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("reading manifest: %w", err)
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("reading manifest: %w", err)
	}
	mDigest, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("computing manifest digest: %w", err)
	}
	blobs := []blob{
		bytesBlob(mDigest, rawManifest),
		bytesBlob(m.Config.Digest, rawConfig),
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("reading layers: %w", err)
	}
	for i, l := range layers {
		if i >= len(m.Layers) {
			return nil, fmt.Errorf("image has %d layers but manifest lists %d", len(layers), len(m.Layers))
		}
		blobs = append(blobs, blob{digest: m.Layers[i].Digest, size: m.Layers[i].Size, open: l.Compressed})
	}
	return blobs, nil
}

func bytesBlob(d v1.Hash, b []byte) blob {
	return blob{digest: d, size: int64(len(b)), open: func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}}
}

// indexEntries returns the index.json descriptors for img: one per name,
// annotated as BuildKit does, or one unnamed entry when there are none.
func indexEntries(img top, names []string) ([]v1.Descriptor, error) {
	mt, err := img.MediaType()
	if err != nil {
		return nil, fmt.Errorf("reading media type: %w", err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, fmt.Errorf("computing manifest digest: %w", err)
	}
	size, err := img.Size()
	if err != nil {
		return nil, fmt.Errorf("computing manifest size: %w", err)
	}
	base := v1.Descriptor{MediaType: mt, Digest: d, Size: size}
	if len(names) == 0 {
		return []v1.Descriptor{base}, nil
	}
	out := make([]v1.Descriptor, 0, len(names))
	for _, n := range names {
		e := base
		e.Annotations = map[string]string{annotationImageName: n, annotationRefName: refName(n)}
		out = append(out, e)
	}
	return out, nil
}

// refName is the OCI ref.name of a full image name: its tag (or digest),
// as containerd's archive exporter writes it.
func refName(n string) string {
	named, err := reference.ParseNormalizedNamed(n)
	if err != nil {
		return n
	}
	if t, ok := named.(reference.Tagged); ok {
		return t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		return d.Digest().String()
	}
	return n
}

// mergeIndex adds entries to idx, dropping older entries carrying the same
// name (or, for an unnamed entry, an unnamed entry of the same digest).
func mergeIndex(idx *v1.IndexManifest, entries []v1.Descriptor) {
	var kept []v1.Descriptor
	for _, m := range idx.Manifests {
		replaced := false
		for _, e := range entries {
			en, mn := e.Annotations[annotationImageName], m.Annotations[annotationImageName]
			if en != "" && en == mn {
				replaced = true
			}
			if en == "" && mn == "" && m.Annotations[annotationRefName] == "" && e.Digest == m.Digest {
				replaced = true
			}
		}
		if !replaced {
			kept = append(kept, m)
		}
	}
	idx.Manifests = append(kept, entries...)
}

// writeLayoutDir adds img to the OCI image layout at dir, creating it if
// needed. Blobs are written atomically and verified; index.json is
// rewritten atomically. With withLock, the whole write happens under an
// exclusive flock on dir/.kiln.lock, so concurrent builds sharing kiln's
// store never lose each other's entries and a collection (StoreGC) never
// takes a blob whose index entry is not written yet; user-named output
// directories are not littered with the lock file. A blob found in
// linkFrom (a directory of blobs named by hex digest: kiln's cache) is
// hard-linked instead of copied, so the store costs no second copy.
func writeLayoutDir(ctx context.Context, dir string, img top, names []string, withLock bool, linkFrom string) error {
	blobs, err := blobsOf(img)
	if err != nil {
		return err
	}
	entries, err := indexEntries(img, names)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return fmt.Errorf("creating layout: %w", err)
	}
	if withLock {
		held, err := lock.Acquire(ctx, filepath.Join(dir, ".kiln.lock"), lock.Exclusive)
		if err != nil {
			return fmt.Errorf("writing layout %s: %w", dir, err)
		}
		defer held.Unlock()
	}
	for _, b := range blobs {
		if linkBlob(dir, linkFrom, b) {
			continue
		}
		if err := writeBlob(ctx, dir, b); err != nil {
			return err
		}
	}
	if len(blobs) > 0 {
		// The manifest's mtime is the image's last use, for StoreGC.
		now := time.Now()
		_ = os.Chtimes(filepath.Join(dir, "blobs", "sha256", blobs[0].digest.Hex), now, now)
	}

	layoutPath := filepath.Join(dir, "oci-layout")
	if _, err := os.Stat(layoutPath); errors.Is(err, fs.ErrNotExist) {
		if err := writeFileAtomic(layoutPath, []byte(ociLayoutFile)); err != nil {
			return err
		}
	}
	idx := &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	indexPath := filepath.Join(dir, "index.json")
	if raw, err := os.ReadFile(indexPath); err == nil {
		if err := json.Unmarshal(raw, idx); err != nil {
			return fmt.Errorf("reading %s: %w", indexPath, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("reading index: %w", err)
	}
	mergeIndex(idx, entries)
	raw, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("encoding index: %w", err)
	}
	return writeFileAtomic(indexPath, raw)
}

// linkBlob hard-links b from the blob directory src into dir's layout when
// src holds a file of b's size under b's digest (its writer verified it).
func linkBlob(dir, src string, b blob) bool {
	if src == "" || b.digest.Algorithm != "sha256" {
		return false
	}
	final := filepath.Join(dir, "blobs", "sha256", b.digest.Hex)
	if st, err := os.Stat(final); err == nil && st.Size() == b.size {
		return true
	}
	from := filepath.Join(src, b.digest.Hex)
	if st, err := os.Stat(from); err != nil || st.Size() != b.size {
		return false
	}
	err := os.Link(from, final)
	return err == nil || errors.Is(err, fs.ErrExist)
}

// writeBlob stores b under dir/blobs/sha256 unless a file of the right
// size is there, verifying size and digest before the rename.
func writeBlob(ctx context.Context, dir string, b blob) error {
	if b.digest.Algorithm != "sha256" {
		return fmt.Errorf("blob %s: only sha256 digests are supported", b.digest)
	}
	final := filepath.Join(dir, "blobs", "sha256", b.digest.Hex)
	if st, err := os.Stat(final); err == nil && st.Size() == b.size {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	rc, err := b.open()
	if err != nil {
		return fmt.Errorf("opening blob %s: %w", b.digest, err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(final), ".tmp-"+b.digest.Hex[:12]+"-")
	if err != nil {
		return fmt.Errorf("writing blob %s: %w", b.digest, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), ioctx.Reader(ctx, rc))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing blob %s: %w", b.digest, err)
	}
	if n != b.size || hex.EncodeToString(h.Sum(nil)) != b.digest.Hex {
		return fmt.Errorf("blob %s: wrote %d bytes hashing to sha256:%x, want %d bytes", b.digest, n, h.Sum(nil), b.size)
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return fmt.Errorf("writing blob %s: %w", b.digest, err)
	}
	return nil
}

// writeLayoutTar streams img as an OCI image layout tar, as `docker buildx
// build -o type=oci` produces: blobs, then oci-layout and index.json.
func writeLayoutTar(ctx context.Context, w io.Writer, img top, names []string) error {
	blobs, err := blobsOf(img)
	if err != nil {
		return err
	}
	entries, err := indexEntries(img, names)
	if err != nil {
		return err
	}
	idx := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: entries}
	rawIndex, err := json.Marshal(idx)
	if err != nil {
		return fmt.Errorf("encoding index: %w", err)
	}
	tw := tar.NewWriter(w)
	for _, dirName := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(tarHeader(dirName, tar.TypeDir, 0)); err != nil {
			return fmt.Errorf("writing tar: %w", err)
		}
	}
	written := map[v1.Hash]bool{}
	for _, b := range blobs {
		if written[b.digest] {
			continue // the same layer twice in one image
		}
		written[b.digest] = true
		if err := tarBlob(ctx, tw, "blobs/sha256/"+b.digest.Hex, b); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{"oci-layout", []byte(ociLayoutFile)}, {"index.json", rawIndex}} {
		if err := tarBlob(ctx, tw, f.name, bytesBlob(v1.Hash{}, f.data)); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("writing tar: %w", err)
	}
	return nil
}

func tarBlob(ctx context.Context, tw *tar.Writer, name string, b blob) error {
	if err := tw.WriteHeader(tarHeader(name, tar.TypeReg, b.size)); err != nil {
		return fmt.Errorf("writing tar: %w", err)
	}
	rc, err := b.open()
	if err != nil {
		return fmt.Errorf("opening blob %s: %w", b.digest, err)
	}
	defer rc.Close()
	n, err := io.Copy(tw, ioctx.Reader(ctx, rc))
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if n != b.size {
		return fmt.Errorf("writing %s: got %d bytes, manifest says %d", name, n, b.size)
	}
	return nil
}

// tarHeader makes headers with fixed times and owners, so the same image
// always gives the same archive bytes.
func tarHeader(name string, typ byte, size int64) *tar.Header {
	mode := int64(0o644)
	if typ == tar.TypeDir {
		mode = 0o755
	}
	return &tar.Header{
		Typeflag: typ, Name: strings.TrimPrefix(name, "/"), Size: size, Mode: mode,
		ModTime: time.Unix(0, 0).UTC(), Format: tar.FormatPAX,
	}
}
