package fileop

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"

	mode "github.com/tonistiigi/dchapes-mode"
)

// Chmod is a COPY or ADD --chmod value: octal, which every copied file and
// directory gets as it is, or symbolic as chmod(1) writes it ("u+x",
// "go-w,o=r", "a+X"), applied to each source's own mode. BuildKit takes
// both, parsing the symbolic form with this library (and no umask).
type Chmod struct {
	octal fs.FileMode // Go's bits for the octal value, when sym is nil
	sym   *mode.Set
}

// ParseChmod reads a --chmod value; "" is none (nil). The errors are
// BuildKit's words.
func ParseChmod(s string) (*Chmod, error) {
	if s == "" {
		return nil, nil
	}
	nonOctal := fmt.Errorf("invalid chmod parameter: '%v'. it should be octal string and between 0 and 07777", s)
	if p, err := strconv.ParseUint(s, 8, 32); err == nil {
		if p > 0o7777 {
			return nil, nonOctal
		}
		return &Chmod{octal: fileMode(fs.FileMode(p & 0o7777))}, nil
	}
	set, err := mode.Parse(s)
	if err != nil {
		// A value that looks numeric gets the octal message, as in
		// BuildKit.
		if ne := (*strconv.NumError)(nil); errors.As(err, &ne) {
			return nil, nonOctal
		}
		return nil, fmt.Errorf("invalid chmod parameter %q: %w", s, err)
	}
	return &Chmod{sym: &set}, nil
}

// apply is the mode an object whose own mode is m (type bits included)
// gets.
func (c *Chmod) apply(m fs.FileMode) fs.FileMode {
	if c.sym != nil {
		return c.sym.Apply(m)
	}
	return m.Type() | c.octal
}
