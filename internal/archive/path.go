package archive

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// ErrEscapes is wrapped by errors for entry names (or hardlink targets)
// that climb above the directory an archive is extracted into.
var ErrEscapes = errors.New("escapes the destination")

// Clean makes an entry name relative and clean, slash-separated, "." for
// the root itself. A name that climbs above the root ("../x",
// "a/../../x") is refused with ErrEscapes; a leading "/" is dropped, as tar
// and BuildKit do.
func Clean(name string) (string, error) {
	c := path.Clean(strings.TrimLeft(name, "/"))
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("archive entry %q %w", name, ErrEscapes)
	}
	return c, nil
}

// Join is dest joined with the cleaned entry name, refusing names that
// escape dest with ErrEscapes. dest is slash-separated.
func Join(dest, name string) (string, error) {
	c, err := Clean(name)
	if err != nil {
		return "", err
	}
	return path.Join(dest, c), nil
}

// split returns the components of a cleaned relative path ("." has none).
func split(p string) []string {
	if p == "" || p == "." {
		return nil
	}
	return strings.Split(p, "/")
}
