package dockerfile

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// update rewrites the golden files: go test ./internal/dockerfile -update
var update = flag.Bool("update", false, "rewrite testdata/*/*/expected.txt from the current output")

// TestParseGolden parses testdata/parse/<case>/Dockerfile and compares a
// stable dump of the result with testdata/parse/<case>/expected.txt.
func TestParseGolden(t *testing.T) {
	for _, dir := range caseDirs(t, "parse") {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			src := readFile(t, filepath.Join(dir, "Dockerfile"))
			df, err := Parse("Dockerfile", src)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkGolden(t, filepath.Join(dir, "expected.txt"), dump(df))
		})
	}
}

// TestParseErrorsGolden parses testdata/errors/<case>/Dockerfile, which must
// fail, and compares the error text with testdata/errors/<case>/expected.txt.
func TestParseErrorsGolden(t *testing.T) {
	for _, dir := range caseDirs(t, "errors") {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			src := readFile(t, filepath.Join(dir, "Dockerfile"))
			df, err := Parse("Dockerfile", src)
			if err == nil {
				t.Fatalf("Parse succeeded, want an error; got:\n%s", dump(df))
			}
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("error %v (%T) is not a *dockerfile.Error", err, err)
			}
			if de.File != "Dockerfile" {
				t.Errorf("Error.File = %q, want %q", de.File, "Dockerfile")
			}
			if de.Line > 0 {
				if want := fmt.Sprintf("Dockerfile:%d: ", de.Line); !strings.HasPrefix(err.Error(), want) {
					t.Errorf("error %q does not start with %q", err, want)
				}
			}
			checkGolden(t, filepath.Join(dir, "expected.txt"), err.Error()+"\n")
		})
	}
}

func caseDirs(t *testing.T, kind string) []string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join("testdata", kind, "*"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Fatalf("no cases under testdata/%s", kind)
	}
	sort.Strings(dirs)
	return dirs
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run with -update to accept)\n--- got ---\n%s--- want ---\n%s", path, got, want)
	}
}

// dump renders a parsed Dockerfile as stable, line-oriented text.
func dump(df *Dockerfile) string {
	var b strings.Builder
	fmt.Fprintf(&b, "escape %q\n", df.Escape)
	b.WriteString("global args:\n")
	for _, cmd := range df.MetaArgs {
		fmt.Fprintf(&b, "  %s ARG%s\n", lines(cmd.Location()), argPairs(cmd.Args))
	}
	for i, s := range df.Stages {
		fmt.Fprintf(&b, "stage %d name=%q base=%q platform=%q from=%s\n",
			i, s.Name, s.BaseName, s.Platform, lines(s.Location))
		for _, c := range s.Comments {
			fmt.Fprintf(&b, "  comment %q\n", c)
		}
		for _, cmd := range s.Commands {
			for _, c := range cmd.Comments() {
				fmt.Fprintf(&b, "  comment %q\n", c)
			}
			fmt.Fprintf(&b, "  %s %s%s\n", lines(cmd.Location()), strings.ToUpper(cmd.Name()), details(cmd))
		}
	}
	return b.String()
}

// lines is "N" for a one-line instruction and "N-M" for a continued one.
func lines(loc []parser.Range) string {
	if len(loc) == 0 {
		return "?"
	}
	start, end := loc[0].Start.Line, loc[len(loc)-1].End.Line
	if end > start {
		return fmt.Sprintf("%d-%d", start, end)
	}
	return fmt.Sprint(start)
}

func details(cmd instructions.Command) string {
	var f fields
	switch c := cmd.(type) {
	case *instructions.RunCommand:
		f.cmdLine(c.ShellDependantCmdLine)
		// --mount values are only parsed by Expand (BuildKit defers them
		// until variables are known), so the parse dump shows just which
		// flags were used; TestExpandRunMounts covers the parsed mounts.
		if n := instructions.GetNetwork(c); n != instructions.NetworkDefault {
			f.add("network", n)
		}
		if s := instructions.GetSecurity(c); s != instructions.SecuritySandbox {
			f.add("security", s)
		}
		if len(c.FlagsUsed) > 0 {
			// BuildKit collects FlagsUsed from a map: sort for a stable dump.
			used := append([]string(nil), c.FlagsUsed...)
			sort.Strings(used)
			f.add("flags", used)
		}
	case *instructions.CmdCommand:
		f.cmdLine(c.ShellDependantCmdLine)
	case *instructions.EntrypointCommand:
		f.cmdLine(c.ShellDependantCmdLine)
	case *instructions.CopyCommand:
		f.sources(c.SourcesAndDest)
		f.opt("from", c.From)
		f.opt("chown", c.Chown)
		f.opt("chmod", c.Chmod)
		if c.Link {
			f.add("link", true)
		}
		if c.Parents {
			f.add("parents", true)
		}
		if len(c.ExcludePatterns) > 0 {
			f.add("exclude", c.ExcludePatterns)
		}
		f.heredocs(c.SourceContents)
	case *instructions.AddCommand:
		f.sources(c.SourcesAndDest)
		f.opt("chown", c.Chown)
		f.opt("chmod", c.Chmod)
		if c.Link {
			f.add("link", true)
		}
		f.opt("checksum", c.Checksum)
		if c.KeepGitDir != nil {
			f.add("keep-git-dir", *c.KeepGitDir)
		}
		if c.Unpack != nil {
			f.add("unpack", *c.Unpack)
		}
		if len(c.ExcludePatterns) > 0 {
			f.add("exclude", c.ExcludePatterns)
		}
		f.heredocs(c.SourceContents)
	case *instructions.EnvCommand:
		f.pairs(c.Env)
	case *instructions.LabelCommand:
		f.pairs(c.Labels)
	case *instructions.ArgCommand:
		return argPairs(c.Args)
	case *instructions.HealthCheckCommand:
		h := c.Health
		f.add("test", h.Test)
		if h.Interval != 0 {
			f.add("interval", h.Interval)
		}
		if h.Timeout != 0 {
			f.add("timeout", h.Timeout)
		}
		if h.StartPeriod != 0 {
			f.add("start-period", h.StartPeriod)
		}
		if h.StartInterval != 0 {
			f.add("start-interval", h.StartInterval)
		}
		if h.Retries != 0 {
			f.add("retries", h.Retries)
		}
	case *instructions.ExposeCommand:
		f.add("ports", c.Ports)
	case *instructions.VolumeCommand:
		f.add("volumes", c.Volumes)
	case *instructions.UserCommand:
		f.add("user", c.User)
	case *instructions.WorkdirCommand:
		f.add("path", c.Path)
	case *instructions.ShellCommand:
		f.add("shell", c.Shell)
	case *instructions.StopSignalCommand:
		f.add("signal", c.Signal)
	case *instructions.OnbuildCommand:
		f.add("expression", c.Expression)
	case *instructions.MaintainerCommand:
		f.add("maintainer", c.Maintainer)
	default:
		f.add("unhandled", fmt.Sprintf("%T", cmd))
	}
	return f.String()
}

// fields accumulates ` key=value` parts; each value is printed with %q so
// whitespace and quotes stay visible. Heredoc bodies go on their own lines.
type fields struct {
	parts []string
	tail  []string
}

func (f *fields) add(k string, v any) {
	f.parts = append(f.parts, k+"="+quote(v))
}

func (f *fields) opt(k, v string) {
	if v != "" {
		f.add(k, v)
	}
}

func (f *fields) cmdLine(c instructions.ShellDependantCmdLine) {
	if c.PrependShell {
		f.parts = append(f.parts, "shell-form")
	} else {
		f.parts = append(f.parts, "exec-form")
	}
	f.add("argv", c.CmdLine)
	for _, h := range c.Files {
		f.tail = append(f.tail, fmt.Sprintf("heredoc name=%q chomp=%t data=%q", h.Name, h.Chomp, h.Data))
	}
}

func (f *fields) sources(s instructions.SourcesAndDest) {
	if len(s.SourcePaths) > 0 {
		f.add("src", s.SourcePaths)
	}
	f.add("dest", s.DestPath)
}

func (f *fields) heredocs(cs []instructions.SourceContent) {
	for _, c := range cs {
		f.tail = append(f.tail, fmt.Sprintf("heredoc path=%q expand=%t data=%q", c.Path, c.Expand, c.Data))
	}
}

func (f *fields) pairs(kvs instructions.KeyValuePairs) {
	for _, kv := range kvs {
		s := quote(kv.Key) + "=" + quote(kv.Value)
		if kv.NoDelim {
			s += "(legacy-space-form)"
		}
		f.parts = append(f.parts, s)
	}
}

func (f *fields) String() string {
	var b strings.Builder
	for _, p := range f.parts {
		b.WriteString(" ")
		b.WriteString(p)
	}
	for _, t := range f.tail {
		b.WriteString("\n      ")
		b.WriteString(t)
	}
	return b.String()
}

func quote(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("%q", v)
	case []string:
		q := make([]string, len(v))
		for i, s := range v {
			q[i] = fmt.Sprintf("%q", s)
		}
		return "[" + strings.Join(q, " ") + "]"
	default:
		return fmt.Sprint(v)
	}
}

func argPairs(args []instructions.KeyValuePairOptional) string {
	var b strings.Builder
	for _, a := range args {
		if a.Value == nil {
			fmt.Fprintf(&b, " %s(no default)", a.Key)
		} else {
			fmt.Fprintf(&b, " %s=%q", a.Key, *a.Value)
		}
	}
	return b.String()
}

func mountString(m *instructions.Mount) string {
	parts := []string{"type=" + string(m.Type)}
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("from", m.From)
	add("source", m.Source)
	add("target", m.Target)
	add("id", m.CacheID)
	add("sharing", string(m.CacheSharing))
	if m.ReadOnly {
		parts = append(parts, "ro")
	}
	if m.Required {
		parts = append(parts, "required")
	}
	if m.Env != nil {
		parts = append(parts, "env="+*m.Env)
	}
	if m.Mode != nil {
		parts = append(parts, fmt.Sprintf("mode=%#o", *m.Mode))
	}
	if m.UID != nil {
		parts = append(parts, fmt.Sprintf("uid=%d", *m.UID))
	}
	if m.GID != nil {
		parts = append(parts, fmt.Sprintf("gid=%d", *m.GID))
	}
	return strings.Join(parts, ",")
}
