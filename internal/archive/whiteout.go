package archive

import (
	"fmt"
	"path"
	"strings"
)

// OCI whiteout names (image-spec layer.md).
const (
	// WhiteoutPrefix marks ".wh.<name>": <name> of lower layers is deleted.
	WhiteoutPrefix = ".wh."
	// WhiteoutMeta prefixes AUFS bookkeeping names, which are not content.
	WhiteoutMeta = ".wh..wh."
	// WhiteoutOpaque in a directory hides everything lower layers put there.
	WhiteoutOpaque = ".wh..wh..opq"
)

// WhiteoutKind says what a layer entry name means.
type WhiteoutKind int

const (
	NotWhiteout WhiteoutKind = iota
	Whiteout                 // deletes Target
	Opaque                   // Target (a directory) hides lower contents
	Meta                     // AUFS bookkeeping: skip
)

// ParseWhiteout classifies a cleaned entry name. For Whiteout, target is
// the deleted path; for Opaque, the directory. A ".wh." naming nothing
// (".wh.", ".wh..") is refused with ErrEscapes.
func ParseWhiteout(name string) (kind WhiteoutKind, target string, err error) {
	base := path.Base(name)
	switch {
	case !strings.HasPrefix(base, WhiteoutPrefix):
		return NotWhiteout, "", nil
	case base == WhiteoutOpaque:
		return Opaque, path.Dir(name), nil
	case strings.HasPrefix(base, WhiteoutMeta):
		return Meta, "", nil
	}
	hidden := strings.TrimPrefix(base, WhiteoutPrefix)
	if hidden == "" || hidden == "." || hidden == ".." {
		return 0, "", fmt.Errorf("whiteout %q names no file: %w", name, ErrEscapes)
	}
	return Whiteout, path.Join(path.Dir(name), hidden), nil
}

// WhiteoutName is the whiteout entry name deleting p.
func WhiteoutName(p string) string {
	return path.Join(path.Dir(p), WhiteoutPrefix+path.Base(p))
}

// OpaqueName is the marker entry name making directory dir opaque.
func OpaqueName(dir string) string { return path.Join(dir, WhiteoutOpaque) }
