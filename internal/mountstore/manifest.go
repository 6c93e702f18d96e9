package mountstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-build/kiln/internal/archive"
)

// Version is the manifest format this package writes and reads.
const Version = 1

// Entry types.
const (
	TypeDir      = "dir"
	TypeFile     = "file"
	TypeSymlink  = "symlink"
	TypeHardlink = "hardlink"
)

// Manifest describes one saved mount: every entry and where its bytes are.
type Manifest struct {
	Version int     `json:"version"`
	Packs   []Pack  `json:"packs"`
	Entries []Entry `json:"entries"`
}

// Pack is one pack blob.
type Pack struct {
	Digest digest.Digest `json:"digest"` // of the compressed bytes
	DiffID digest.Digest `json:"diffID"` // of the uncompressed bytes
	Size   int64         `json:"size"`   // compressed bytes
	// Raw is the uncompressed bytes, so a save can tell how much of a
	// pack its manifest still uses (0: unknown, never compacted).
	Raw int64 `json:"raw,omitempty"`
}

// Entry is one file, directory or link of a mount.
type Entry struct {
	Path   string            `json:"path"`
	Type   string            `json:"type"`
	Mode   uint32            `json:"mode,omitempty"` // permission, setuid, setgid and sticky bits
	UID    int               `json:"uid,omitempty"`
	GID    int               `json:"gid,omitempty"`
	Size   int64             `json:"size,omitempty"`
	MTime  int64             `json:"mtime,omitempty"` // Unix nanoseconds
	Link   string            `json:"link,omitempty"`  // symlink target, or the path a hardlink names
	Xattrs map[string][]byte `json:"xattrs,omitempty"`
	Chunks []Chunk           `json:"chunks,omitempty"`
}

// Chunk is a piece of a regular file's bytes, in file order.
type Chunk struct {
	Digest digest.Digest `json:"digest"` // sha256 of its bytes
	Size   int64         `json:"size"`
	Pack   int           `json:"pack"`   // index into Manifest.Packs
	Offset int64         `json:"offset"` // into the uncompressed pack
}

// ErrBadManifest is wrapped by errors for manifests that fail validation.
var ErrBadManifest = errors.New("invalid cache mount manifest")

// Limits on what a manifest may ask for, so a hostile one cannot make a
// restore allocate without bound.
const (
	maxManifest = 256 << 20 // uncompressed manifest bytes
	maxPackRaw  = 64 << 20  // uncompressed bytes of one pack
)

// Files is the number of regular files and their bytes.
func (m *Manifest) Files() (n int, bytes int64) {
	for _, e := range m.Entries {
		if e.Type == TypeFile {
			n++
			bytes += e.Size
		}
	}
	return n, bytes
}

// Encode writes m as the manifest blob: zstd-compressed JSON.
func (m *Manifest) Encode() (compressed, raw []byte, err error) {
	raw, err = json.Marshal(m)
	if err != nil {
		return nil, nil, err
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		return nil, nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(raw, nil), raw, nil
}

// Decode reads and validates a manifest blob.
func Decode(r io.Reader) (*Manifest, error) {
	dec, err := zstd.NewReader(r, zstd.WithDecoderMaxMemory(maxManifest), zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	raw, err := io.ReadAll(io.LimitReader(dec, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	if len(raw) > maxManifest {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrBadManifest, maxManifest)
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadManifest, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Validate checks what Restore relies on: a known version, clean unique
// paths that stay inside the mount, hardlinks naming an earlier file, and
// chunks that add up to their file and lie inside bounded packs.
func (m *Manifest) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrBadManifest, fmt.Sprintf(format, a...))
	}
	if m.Version != Version {
		return bad("version %d, this kiln reads %d", m.Version, Version)
	}
	for i, p := range m.Packs {
		if p.Digest.Validate() != nil || p.DiffID.Validate() != nil || p.Digest.Algorithm() != digest.SHA256 || p.Size <= 0 {
			return bad("pack %d: %q", i, p.Digest)
		}
	}
	seen := make(map[string]string, len(m.Entries))
	for _, e := range m.Entries {
		c, err := archive.Clean(e.Path)
		if err != nil || c != e.Path || e.Path == "" {
			return bad("path %q is not clean and relative", e.Path)
		}
		if _, dup := seen[e.Path]; dup {
			return bad("path %q twice", e.Path)
		}
		if e.Path == "." && e.Type != TypeDir {
			return bad("the mount itself is a %s", e.Type)
		}
		if e.Mode&^0o7777 != 0 {
			return bad("%s: mode %o", e.Path, e.Mode)
		}
		switch e.Type {
		case TypeDir, TypeSymlink:
			if len(e.Chunks) != 0 || e.Size != 0 {
				return bad("%s: a %s with bytes", e.Path, e.Type)
			}
		case TypeHardlink:
			if seen[e.Link] != TypeFile {
				return bad("%s: hardlink to %q, not an earlier file", e.Path, e.Link)
			}
		case TypeFile:
			var sum int64
			for _, c := range e.Chunks {
				if !isSHA256(c.Digest) {
					return bad("%s: chunk %q", e.Path, c.Digest)
				}
				if c.Pack < 0 || c.Pack >= len(m.Packs) || c.Size <= 0 || c.Offset < 0 || c.Offset+c.Size > maxPackRaw {
					return bad("%s: chunk %s out of its pack", e.Path, c.Digest)
				}
				sum += c.Size
			}
			if sum != e.Size {
				return bad("%s: chunks hold %d bytes, the file %d", e.Path, sum, e.Size)
			}
		default:
			return bad("%s: type %q", e.Path, e.Type)
		}
		seen[e.Path] = e.Type
	}
	return nil
}

// isSHA256 reports whether d is a sha256 digest as go-digest validates
// it, without its regular expression: a manifest names one per chunk.
func isSHA256(d digest.Digest) bool {
	hex, ok := strings.CutPrefix(string(d), "sha256:")
	if !ok || len(hex) != 64 {
		return false
	}
	for i := 0; i < len(hex); i++ {
		if c := hex[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
