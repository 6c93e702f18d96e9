package solver

import (
	"errors"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/sys/signal"
)

// historyComment marks history entries the way BuildKit's Dockerfile
// frontend does, so tools that read history see what they expect.
const historyComment = "buildkit.dockerfile.v0"

// defaultPath is the PATH BuildKit gives images that lack one.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// commit appends a metadata instruction's history entry, as BuildKit's
// commitToHistory does. Its time is filled in at export, from the layers
// around it (see fillCreated), so a fully cached build reproduces it.
func (b *builder) commit(s *stage, createdBy string, withLayer bool) {
	b.commitAt(s, createdBy, withLayer, time.Time{})
}

// commitAt appends a history entry created at t (zero: fill in later).
// With SOURCE_DATE_EPOCH every time is the epoch.
func (b *builder) commitAt(s *stage, createdBy string, withLayer bool, t time.Time) {
	if b.opts.Epoch != nil {
		t = b.opts.Epoch.UTC()
	}
	s.cfg.History = append(s.cfg.History, v1.History{
		Created:    v1.Time{Time: t},
		CreatedBy:  createdBy,
		Comment:    historyComment,
		EmptyLayer: !withLayer,
	})
}

// setEnv sets k in an image Env list, keeping its position if present.
func setEnv(env []string, k, v string) []string {
	for i, kv := range env {
		if key, _, _ := strings.Cut(kv, "="); key == k {
			env[i] = k + "=" + v
			return env
		}
	}
	return append(env, k+"="+v)
}

// withShell turns a shell-form command line into argv with SHELL.
func withShell(cfg *v1.Config, args []string) []string {
	sh := []string{"/bin/sh", "-c"}
	if len(cfg.Shell) > 0 {
		sh = append([]string(nil), cfg.Shell...)
	}
	return append(sh, strings.Join(args, " "))
}

// dispatchConfig applies an instruction that changes only the image config.
// It reports false for instructions it does not handle.
func (b *builder) dispatchConfig(s *stage, cmd instructions.Command) (bool, error) {
	c := &s.cfg.Config
	switch cmd := cmd.(type) {
	case *instructions.EnvCommand:
		msg := "ENV"
		for _, kv := range cmd.Env {
			c.Env = setEnv(c.Env, kv.Key, kv.Value)
			s.vars.Set(kv.Key, kv.Value)
			msg += " " + kv.String()
		}
		b.commit(s, msg, false)
	case *instructions.LabelCommand:
		if c.Labels == nil {
			c.Labels = map[string]string{}
		}
		msg := "LABEL"
		for _, kv := range cmd.Labels {
			c.Labels[kv.Key] = kv.Value
			msg += " " + kv.String()
		}
		b.commit(s, msg, false)
	case *instructions.MaintainerCommand:
		s.cfg.Author = cmd.Maintainer
		b.commit(s, "MAINTAINER "+cmd.Maintainer, false)
	case *instructions.ExposeCommand:
		var ports []string
		for _, p := range cmd.Ports {
			words, err := b.df.Lex().ProcessWords(p, s.vars)
			if err != nil {
				return true, err
			}
			for _, w := range words {
				ps, err := parsePort(w)
				if err != nil {
					return true, err
				}
				ports = append(ports, ps...)
			}
		}
		if c.ExposedPorts == nil {
			c.ExposedPorts = map[string]struct{}{}
		}
		for _, p := range ports {
			c.ExposedPorts[p] = struct{}{}
		}
		b.commit(s, fmt.Sprintf("EXPOSE %v", ports), false)
	case *instructions.UserCommand:
		c.User = cmd.User
		b.commit(s, "USER "+cmd.User, false)
	case *instructions.CmdCommand:
		args := cmd.CmdLine
		if cmd.PrependShell {
			args = withShell(c, args)
		}
		c.Cmd = args
		c.ArgsEscaped = true
		s.cmdSet = true
		b.commit(s, fmt.Sprintf("CMD %q", args), false)
	case *instructions.EntrypointCommand:
		args := cmd.CmdLine
		if cmd.PrependShell {
			args = withShell(c, args)
		}
		c.Entrypoint = args
		if !s.cmdSet {
			// An ENTRYPOINT resets a CMD inherited from the base image.
			c.Cmd = nil
		}
		c.ArgsEscaped = true
		b.commit(s, fmt.Sprintf("ENTRYPOINT %q", args), false)
	case *instructions.HealthCheckCommand:
		h := cmd.Health
		c.Healthcheck = &v1.HealthConfig{
			Test:        h.Test,
			Interval:    h.Interval,
			Timeout:     h.Timeout,
			StartPeriod: h.StartPeriod,
			Retries:     h.Retries,
		}
		s.startInterval = h.StartInterval
		b.commit(s, fmt.Sprintf("HEALTHCHECK %+v", *h), false)
	case *instructions.VolumeCommand:
		if c.Volumes == nil {
			c.Volumes = map[string]struct{}{}
		}
		for _, v := range cmd.Volumes {
			if v == "" {
				return true, errors.New("VOLUME specified can not be an empty string")
			}
			c.Volumes[v] = struct{}{}
		}
		b.commit(s, fmt.Sprintf("VOLUME %v", cmd.Volumes), false)
	case *instructions.StopSignalCommand:
		if _, err := signal.ParseSignal(cmd.Signal); err != nil {
			return true, err
		}
		c.StopSignal = cmd.Signal
		b.commit(s, "STOPSIGNAL "+cmd.Signal, false)
	case *instructions.ShellCommand:
		c.Shell = cmd.Shell
		b.commit(s, fmt.Sprintf("SHELL %v", cmd.Shell), false)
	case *instructions.OnbuildCommand:
		c.OnBuild = append(c.OnBuild, cmd.Expression)
	case *instructions.ArgCommand:
		return true, b.dispatchArg(s, cmd)
	default:
		return false, nil
	}
	return true, nil
}

// dispatchArg declares ARGs: a --build-arg wins, then the default
// (expanded), then the value of a global ARG of the same name. Values enter
// the expansion scope (and, later, RUN's environment) but never the image.
func (b *builder) dispatchArg(s *stage, cmd *instructions.ArgCommand) error {
	var parts []string
	for _, a := range cmd.Args {
		var val *string
		if v, ok := b.opts.BuildArgs[a.Key]; ok {
			val = &v
		} else if a.Value != nil {
			v, err := b.df.ExpandWord(*a.Value, s.vars)
			if err != nil {
				return err
			}
			val = &v
		} else if v, ok := b.globals.Get(a.Key); ok {
			val = &v
		}
		part := a.Key
		if val != nil {
			s.vars.Set(a.Key, *val)
			part += "=" + *val
		}
		s.args = append(s.args, a.Key)
		parts = append(parts, part)
	}
	b.commit(s, "ARG "+strings.Join(parts, " "), false)
	return nil
}

// parsePort expands one EXPOSE word ("80", "80/udp", "8000-8002/tcp") to
// the "port/proto" keys of ExposedPorts.
func parsePort(raw string) ([]string, error) {
	spec := raw
	if i := strings.LastIndex(spec, ":"); i >= 0 {
		spec = spec[i+1:] // ip:host:container — only the container port is exposed
	}
	port, proto, _ := strings.Cut(spec, "/")
	proto = strings.ToLower(proto)
	switch proto {
	case "":
		proto = "tcp"
	case "tcp", "udp", "sctp":
	default:
		return nil, fmt.Errorf("invalid port %q: invalid proto %q", raw, proto)
	}
	lo, hi, isRange := strings.Cut(port, "-")
	start, err := portNumber(lo)
	if err != nil {
		return nil, fmt.Errorf("invalid port %q: %w", raw, err)
	}
	end := start
	if isRange {
		if end, err = portNumber(hi); err != nil {
			return nil, fmt.Errorf("invalid port %q: %w", raw, err)
		}
		if end < start {
			return nil, fmt.Errorf("invalid port range %q", raw)
		}
	}
	var out []string
	for p := start; p <= end; p++ {
		out = append(out, strconv.Itoa(p)+"/"+proto)
	}
	return out, nil
}

func portNumber(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 65535 {
		return 0, fmt.Errorf("%q is not a port number (0-65535)", s)
	}
	return n, nil
}

// resolveWorkdir is BuildKit's NormalizeWorkdir: relative paths join the
// current working directory.
func resolveWorkdir(current, p string) string {
	if !path.IsAbs(p) {
		if current == "" {
			current = "/"
		}
		p = path.Join(current, p)
	}
	return path.Clean(p)
}

// destPath resolves a COPY/ADD destination against WORKDIR, keeping a
// trailing slash (which says "into this directory").
func destPath(workdir, p string) string {
	if p == "." || p == "" {
		p = "./"
	}
	slash := strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.")
	if !path.IsAbs(p) {
		if workdir == "" {
			workdir = "/"
		}
		p = path.Join(workdir, p)
	}
	p = path.Clean(p)
	if slash && p != "/" {
		p += "/"
	}
	return p
}
