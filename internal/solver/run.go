package solver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"

	"github.com/kiln-build/kiln/internal/cachekey"
	"github.com/kiln-build/kiln/internal/executor"
	"github.com/kiln-build/kiln/internal/mount"
	"github.com/kiln-build/kiln/internal/progress"
)

// pipesDir is where BuildKit mounts a RUN heredoc that starts with "#!",
// to run it as a script rather than through the shell.
const pipesDir = "/dev/pipes"

// run executes a RUN instruction in a writable snapshot of the stage and
// records what it changed as a layer, unless the cache has it.
func (b *builder) run(ctx context.Context, s *stage, c *instructions.RunCommand) error {
	insecure := instructions.GetSecurity(c) == instructions.SecurityInsecure
	if insecure && !b.opts.AllowInsecure {
		return errors.New("RUN --security=insecure: security.insecure is not allowed (give --allow security.insecure)")
	}
	args, script, err := runArgs(s, c)
	if err != nil {
		return err
	}
	network := string(instructions.GetNetwork(c))
	if network == "" || network == string(instructions.NetworkDefault) {
		network = b.opts.Network
	}
	cwd := s.cfg.Config.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	st, err := b.runStep(ctx, s, c, args, script, network, cwd)
	if err != nil {
		return err
	}
	return b.step(ctx, s, st, func(ctx context.Context, id int) (v1.Layer, error) {
		return b.doRun(ctx, s, c, id, args, script, network, cwd)
	})
}

// runStep describes a RUN for the cache: the command, the environment it
// sees (ARGs in scope included; values as digests), user, directory,
// network and every mount's spec — secrets by id, never by value.
func (b *builder) runStep(ctx context.Context, s *stage, c *instructions.RunCommand, args []string, script *inlineScript, network, cwd string) (step, error) {
	argv, err := json.Marshal(args)
	if err != nil {
		return step{}, err
	}
	in := cachekey.Inputs{
		"instruction": string(argv),
		"user":        s.cfg.Config.User,
		"workdir":     cwd,
		"network":     network,
	}
	if instructions.GetSecurity(c) == instructions.SecurityInsecure {
		// A privileged RUN may make other files than a sandboxed one.
		in["option:security"] = "insecure"
	}
	var inherited []string
	for _, k := range s.vars.Keys() {
		v, _ := s.vars.Get(k)
		kind := "env:"
		if slices.Contains(s.args, k) {
			kind = "arg:"
		} else if slices.Contains(s.inheritedArgs, k) {
			inherited = append(inherited, k)
		}
		in[kind+k] = cachekey.Value(v)
	}
	cachekey.NoteInheritedArgs(in, inherited)
	if script != nil {
		in["heredoc:"+script.name] = cachekey.Value(string(script.data))
	}
	for i, m := range instructions.GetMounts(c) {
		spec, err := b.mountInput(ctx, m)
		if err != nil {
			return step{}, err
		}
		in[fmt.Sprintf("mount:%d", i)] = spec
	}
	return step{op: "run", name: c.String(), history: "RUN " + runCommandString(args, s) + " # buildkit", inputs: in, run: c}, nil
}

// mountInput is a RUN mount as a cache input. What a bind mount shows is
// part of it (context content, or the source stage or image); a cache
// mount's content is not, as in BuildKit.
func (b *builder) mountInput(ctx context.Context, m *instructions.Mount) (string, error) {
	opt := func(p *uint64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatUint(*p, 8)
	}
	env := ""
	if m.Env != nil {
		env = "env=" + *m.Env
	}
	spec := fmt.Sprintf("type=%s target=%s ro=%v id=%s sharing=%s source=%s mode=%s uid=%s gid=%s size=%d required=%v %s",
		m.Type, m.Target, m.ReadOnly, m.CacheID, m.CacheSharing, m.Source, opt(m.Mode), opt(m.UID), opt(m.GID), m.SizeLimit, m.Required, env)
	switch {
	case m.Type != instructions.MountTypeBind && m.Type != instructions.MountTypeCache:
	case m.From != "":
		k, err := b.fromKey(ctx, m.From)
		if err != nil {
			return "", err
		}
		spec += " from=" + k
	case m.Type == instructions.MountTypeBind:
		d, err := b.bctx.Digest(ctx, []string{m.Source})
		if err != nil {
			spec += " context=unreadable"
		} else {
			spec += " context=" + d.String()
		}
	}
	return spec, nil
}

// inlineScript is a RUN heredoc run as a file (it starts with "#!").
type inlineScript struct {
	name string
	data []byte
}

// runArgs turns RUN's command line into argv as BuildKit's dispatchRun
// does: a lone heredoc is the script itself (run as a file when it starts
// with "#!"), heredocs after a command are appended to it, and shell form
// goes through SHELL.
func runArgs(s *stage, c *instructions.RunCommand) ([]string, *inlineScript, error) {
	args := append([]string(nil), c.CmdLine...)
	var script *inlineScript
	if len(c.Files) > 0 {
		if len(args) != 1 || !c.PrependShell {
			return nil, nil, fmt.Errorf("parsing produced an invalid run command: %v", args)
		}
		if hd := parser.MustParseHeredoc(args[0]); hd != nil {
			data := c.Files[0].Data
			if c.Files[0].Chomp {
				data = parser.ChompHeredocContent(data)
			}
			if strings.HasPrefix(data, "#!") {
				script = &inlineScript{name: c.Files[0].Name, data: []byte(data)}
				args = []string{path.Join(pipesDir, c.Files[0].Name)}
			} else {
				args = []string{data}
			}
		} else {
			var sb strings.Builder
			sb.WriteString(args[0])
			for _, f := range c.Files {
				data := f.Data
				if f.Chomp {
					data = parser.ChompHeredocContent(data)
				}
				sb.WriteByte('\n')
				sb.WriteString(data)
				sb.WriteString(f.Name)
			}
			args = []string{sb.String()}
		}
	}
	if c.PrependShell {
		args = withShell(&s.cfg.Config, args)
	}
	return args, script, nil
}

func (b *builder) doRun(ctx context.Context, s *stage, c *instructions.RunCommand, id int, args []string, script *inlineScript, network, cwd string) (v1.Layer, error) {
	// Checked only when a RUN runs: a cached step needs no emulator.
	if err := executor.CheckArch(s.platform.Arch); err != nil {
		return nil, fmt.Errorf("%s: %w", s.platform, err)
	}
	exec, err := b.executor()
	if err != nil {
		return nil, err
	}
	mounts, env, cleanup, err := b.runMounts(ctx, s, c)
	defer cleanup()
	if err != nil {
		return nil, err
	}
	if script != nil {
		m, err := b.scriptMount(script)
		if err != nil {
			return nil, err
		}
		mounts = append(mounts, m)
	}
	out := newTail(20, func(line string) {
		b.sink.Emit(progress.Event{ID: id, Status: progress.Log, Log: line})
	})
	return b.mutate(ctx, s, func(ctx context.Context, rootMounts []mount.Mount) error {
		spec := executor.Spec{
			Root:     rootMounts,
			Mounts:   mounts,
			Args:     args,
			Env:      append(s.vars.Env(), env...),
			Cwd:      cwd,
			User:     s.cfg.Config.User,
			Network:  network,
			Insecure: instructions.GetSecurity(c) == instructions.SecurityInsecure,
			Stdout:   out,
			Stderr:   out,
		}
		err := exec.Run(ctx, spec)
		out.Flush()
		var ee *executor.ExitError
		if errors.As(err, &ee) {
			return &RunError{Command: strings.Join(args, " "), Code: ee.Code, Output: out.Lines()}
		}
		if err != nil {
			return fmt.Errorf("RUN: %w", err)
		}
		return nil
	})
}

// RunError is a RUN whose process exited non-zero. It carries the exit
// code and the last lines the process printed.
type RunError struct {
	Command string
	Code    int
	Output  []string
}

func (e *RunError) Error() string {
	msg := fmt.Sprintf("RUN %s: process did not complete successfully: exit code: %d", e.Command, e.Code)
	if len(e.Output) > 0 {
		msg += "\n  last output:\n    " + strings.Join(e.Output, "\n    ")
	}
	return msg
}

// runCommandString is the created_by text of a RUN as BuildKit writes it:
// "|N K=V ..." for the stage's build ARGs, then the argv.
func runCommandString(args []string, s *stage) string {
	var kvs []string
	seen := map[string]int{}
	for _, k := range s.args {
		v, _ := s.vars.Get(k)
		if i, ok := seen[k]; ok {
			kvs[i] = k + "=" + v
			continue
		}
		seen[k] = len(kvs)
		kvs = append(kvs, k+"="+v)
	}
	if len(kvs) > 0 {
		kvs = append([]string{fmt.Sprintf("|%d", len(kvs))}, kvs...)
	}
	return strings.Join(append(kvs, args...), " ")
}
