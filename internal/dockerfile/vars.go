package dockerfile

import (
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// Vars is an ordered set of variables with last-write-wins semantics, the
// shape of an image's Env and of BuildKit's ARG scopes. It implements
// shell.EnvGetter so the lexer can expand words against it.
type Vars struct {
	keys []string
	vals map[string]string
}

var _ shell.EnvGetter = (*Vars)(nil)

// NewVars builds Vars from KEY=VALUE strings (an image's Env).
func NewVars(env []string) *Vars {
	v := &Vars{vals: map[string]string{}}
	for _, kv := range env {
		k, val, _ := strings.Cut(kv, "=")
		v.Set(k, val)
	}
	return v
}

// Set assigns k, keeping its original position when it already exists.
func (v *Vars) Set(k, val string) {
	if v.vals == nil {
		v.vals = map[string]string{}
	}
	if _, ok := v.vals[k]; !ok {
		v.keys = append(v.keys, k)
	}
	v.vals[k] = val
}

// Get implements shell.EnvGetter.
func (v *Vars) Get(k string) (string, bool) {
	if v == nil {
		return "", false
	}
	val, ok := v.vals[k]
	return val, ok
}

// Keys implements shell.EnvGetter.
func (v *Vars) Keys() []string {
	if v == nil {
		return nil
	}
	return append([]string(nil), v.keys...)
}

// Clone returns an independent copy.
func (v *Vars) Clone() *Vars {
	c := &Vars{vals: make(map[string]string, len(v.vals))}
	c.keys = append(c.keys, v.keys...)
	for k, val := range v.vals {
		c.vals[k] = val
	}
	return c
}

// Env returns KEY=VALUE strings in order.
func (v *Vars) Env() []string {
	out := make([]string, 0, len(v.keys))
	for _, k := range v.keys {
		out = append(out, k+"="+v.vals[k])
	}
	return out
}

// Platform is an OS/architecture/variant triple, as --platform names one.
type Platform struct{ OS, Arch, Variant string }

func (p Platform) String() string {
	s := p.OS + "/" + p.Arch
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// PlatformArgs are the ARGs BuildKit predefines in the global scope, in
// its order (dockerfile2llb's defaultArgs): the platforms' parts, the OS
// versions (empty on Linux, which has none), and TARGETSTAGE, the stage
// being built: --target as given, else the last stage's name, else
// "default".
func PlatformArgs(target, build Platform, stage string) *Vars {
	if stage == "" {
		stage = "default"
	}
	v := &Vars{}
	v.Set("BUILDPLATFORM", build.String())
	v.Set("BUILDOS", build.OS)
	v.Set("BUILDOSVERSION", "")
	v.Set("BUILDARCH", build.Arch)
	v.Set("BUILDVARIANT", build.Variant)
	v.Set("TARGETPLATFORM", target.String())
	v.Set("TARGETOS", target.OS)
	v.Set("TARGETOSVERSION", "")
	v.Set("TARGETARCH", target.Arch)
	v.Set("TARGETVARIANT", target.Variant)
	v.Set("TARGETSTAGE", stage)
	return v
}

// TargetStage is what TARGETSTAGE names when target (--target, perhaps
// empty) is built.
func (d *Dockerfile) TargetStage(target string) string {
	if target != "" || len(d.Stages) == 0 {
		return target
	}
	return d.Stages[len(d.Stages)-1].Name
}

// GlobalArgs evaluates the ARGs before the first FROM: a --build-arg value
// wins over the default, and defaults may refer to earlier global ARGs and
// to the predefined platform ARGs. As in BuildKit (defaultArgs), a
// --build-arg also overrides a predefined ARG that no global ARG declares.
// The result is the scope FROM lines expand in and the scope a stage's bare
// `ARG NAME` inherits from.
func (d *Dockerfile) GlobalArgs(buildArgs map[string]string, predefined *Vars) (*Vars, error) {
	scope := predefined.Clone()
	for _, k := range scope.Keys() {
		if v, ok := buildArgs[k]; ok {
			scope.Set(k, v)
		}
	}
	lex := d.Lex()
	for _, cmd := range d.MetaArgs {
		for _, a := range cmd.Args {
			if v, ok := buildArgs[a.Key]; ok {
				scope.Set(a.Key, v)
				continue
			}
			if a.Value == nil {
				continue
			}
			v, _, err := lex.ProcessWord(*a.Value, scope)
			if err != nil {
				return nil, d.Wrap(cmd.Location(), err)
			}
			scope.Set(a.Key, v)
		}
	}
	return scope, nil
}

// ExpandWord expands $VAR references in word against env.
func (d *Dockerfile) ExpandWord(word string, env shell.EnvGetter) (string, error) {
	v, _, err := d.Lex().ProcessWord(word, env)
	return v, err
}

// Expand expands, in place, every field of cmd that BuildKit expands (COPY
// and ADD sources, destination, --chown and --chmod, ENV and LABEL keys and
// values, WORKDIR, USER, VOLUME, STOPSIGNAL, RUN --mount; not COPY --from,
// which BuildKit refuses to expand). ARG is not expanded here: its defaults
// are evaluated one by one as they are declared.
func (d *Dockerfile) Expand(cmd instructions.Command, env shell.EnvGetter) error {
	if _, isArg := cmd.(*instructions.ArgCommand); isArg {
		return nil
	}
	if ex, ok := cmd.(instructions.SupportsSingleWordExpansion); ok {
		lex := d.Lex()
		if err := ex.Expand(func(word string) (string, error) {
			v, _, err := lex.ProcessWord(word, env)
			return v, err
		}); err != nil {
			return d.Wrap(cmd.Location(), err)
		}
	}
	// Heredoc bodies with an unquoted delimiter expand variables but keep
	// quotes as written, like a shell heredoc.
	if ex, ok := cmd.(instructions.SupportsSingleWordExpansionRaw); ok {
		lex := shell.NewLex('\\')
		lex.SkipProcessQuotes = true
		if err := ex.ExpandRaw(func(word string) (string, error) {
			v, _, err := lex.ProcessWord(word, env)
			return v, err
		}); err != nil {
			return d.Wrap(cmd.Location(), err)
		}
	}
	return nil
}
