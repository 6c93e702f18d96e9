package dockerfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// Dockerfile is a parsed Dockerfile.
type Dockerfile struct {
	// Name is how errors refer to the file (usually its base name).
	Name string
	// MetaArgs are the ARG instructions before the first FROM.
	MetaArgs []instructions.ArgCommand
	// Stages in file order. A stage's Name is lower-cased by BuildKit.
	Stages []instructions.Stage
	// Escape is the escape token from the `# escape=` directive.
	Escape rune
}

// Error is a problem in a Dockerfile, pinned to a line. Line is 0 when the
// problem has no single line (an empty file, an unknown --target).
type Error struct {
	File string
	Line int
	Err  error
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.File, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Parse parses Dockerfile source. name is used in error messages.
func Parse(name string, src []byte) (*Dockerfile, error) {
	res, err := parser.Parse(bytes.NewReader(src))
	if err != nil {
		return nil, locate(name, 0, err)
	}
	stages, metaArgs, err := instructions.Parse(res.AST, nil)
	if err != nil {
		return nil, locate(name, 0, err)
	}
	if len(stages) == 0 {
		return nil, &Error{File: name, Err: errors.New("no FROM instruction: a Dockerfile must start with FROM (after global ARGs)")}
	}
	return &Dockerfile{Name: name, MetaArgs: metaArgs, Stages: stages, Escape: res.EscapeToken}, nil
}

// ParseReader is Parse for a reader.
func ParseReader(name string, r io.Reader) (*Dockerfile, error) {
	src, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return Parse(name, src)
}

// Errorf returns an *Error at the first line of loc.
func (d *Dockerfile) Errorf(loc []parser.Range, format string, args ...any) error {
	return &Error{File: d.Name, Line: StartLine(loc), Err: fmt.Errorf(format, args...)}
}

// Wrap pins err to the first line of loc, unless it already names a line.
func (d *Dockerfile) Wrap(loc []parser.Range, err error) error {
	if err == nil {
		return nil
	}
	var de *Error
	if errors.As(err, &de) {
		return err
	}
	return &Error{File: d.Name, Line: StartLine(loc), Err: clean(err)}
}

// StartLine is the first line of a location, 0 when there is none.
func StartLine(loc []parser.Range) int {
	if len(loc) == 0 {
		return 0
	}
	return loc[0].Start.Line
}

// locate converts BuildKit's parse errors, which carry their line in one of
// several shapes, into an *Error.
func locate(name string, line int, err error) error {
	var le *parser.LocationError
	if errors.As(err, &le) && len(le.Locations) > 0 && len(le.Locations[0]) > 0 {
		line = le.Locations[0][0].Start.Line
	}
	var ue *instructions.UnknownInstructionError
	if errors.As(err, &ue) {
		return &Error{File: name, Line: ue.Line, Err: fmt.Errorf("unknown instruction: %s", ue.Instruction)}
	}
	msg := clean(err)
	// instructions.Parse wraps errors as "dockerfile parse error on line N: ...".
	const prefix = "dockerfile parse error on line "
	if s := msg.Error(); strings.HasPrefix(s, prefix) {
		rest := s[len(prefix):]
		if i := strings.Index(rest, ": "); i > 0 {
			if n, convErr := strconv.Atoi(rest[:i]); convErr == nil {
				line = n
				msg = errors.New(rest[i+2:])
			}
		}
	}
	return &Error{File: name, Line: line, Err: msg}
}

// clean strips BuildKit's stack-carrying wrappers so messages print once.
func clean(err error) error {
	return errors.New(err.Error())
}

// Lex returns a shell lexer for this file's escape token. A Lex is not safe
// for concurrent use, so each caller gets its own.
func (d *Dockerfile) Lex() *shell.Lex {
	return shell.NewLex(d.Escape)
}

// StageIndex finds a stage by name (case-insensitive) or by index, as
// `COPY --from=<stage>` refers to them. ok is false when ref names no stage
// (it is then an image reference). When two stages share the name (BuildKit
// only lints that), the last one wins, as in BuildKit's name map.
func (d *Dockerfile) StageIndex(ref string) (int, bool) {
	l := strings.ToLower(ref)
	for i := len(d.Stages) - 1; i >= 0; i-- {
		if s := d.Stages[i]; s.Name != "" && s.Name == l {
			return i, true
		}
	}
	if n, err := strconv.Atoi(ref); err == nil && n >= 0 && n < len(d.Stages) {
		return n, true
	}
	return 0, false
}

// Target returns the index of the stage --target names, or the last stage.
// When two stages share the name (BuildKit only lints that), the last one
// wins, as in BuildKit.
func (d *Dockerfile) Target(name string) (int, error) {
	if name == "" {
		return len(d.Stages) - 1, nil
	}
	l := strings.ToLower(name)
	for i := len(d.Stages) - 1; i >= 0; i-- {
		if d.Stages[i].Name == l {
			return i, nil
		}
	}
	names := make([]string, 0, len(d.Stages))
	for _, s := range d.Stages {
		if s.Name != "" {
			names = append(names, s.Name)
		}
	}
	return 0, &Error{File: d.Name, Err: fmt.Errorf("target stage %q could not be found (stages: %s)", name, strings.Join(names, ", "))}
}
