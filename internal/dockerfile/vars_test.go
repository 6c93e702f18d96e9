package dockerfile

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
)

func mustParse(t *testing.T, src string) *Dockerfile {
	t.Helper()
	df, err := Parse("Dockerfile", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return df
}

func TestVars(t *testing.T) {
	tests := []struct {
		name     string
		build    func() *Vars
		wantEnv  []string
		wantKeys []string
	}{
		{
			name:     "NewVars keeps order",
			build:    func() *Vars { return NewVars([]string{"PATH=/bin", "HOME=/root", "A=1"}) },
			wantEnv:  []string{"PATH=/bin", "HOME=/root", "A=1"},
			wantKeys: []string{"PATH", "HOME", "A"},
		},
		{
			name:     "NewVars duplicate keeps first position and last value",
			build:    func() *Vars { return NewVars([]string{"A=1", "B=2", "A=3"}) },
			wantEnv:  []string{"A=3", "B=2"},
			wantKeys: []string{"A", "B"},
		},
		{
			name:     "NewVars value may contain =, missing = is empty",
			build:    func() *Vars { return NewVars([]string{"OPTS=a=b=c", "EMPTY"}) },
			wantEnv:  []string{"OPTS=a=b=c", "EMPTY="},
			wantKeys: []string{"OPTS", "EMPTY"},
		},
		{
			name: "Set overwrite keeps position",
			build: func() *Vars {
				v := NewVars([]string{"A=1", "B=2", "C=3"})
				v.Set("B", "two")
				v.Set("D", "4")
				v.Set("A", "one")
				return v
			},
			wantEnv:  []string{"A=one", "B=two", "C=3", "D=4"},
			wantKeys: []string{"A", "B", "C", "D"},
		},
		{
			name: "zero value is usable",
			build: func() *Vars {
				var v Vars
				v.Set("X", "")
				return &v
			},
			wantEnv:  []string{"X="},
			wantKeys: []string{"X"},
		},
		{
			name:     "empty",
			build:    func() *Vars { return NewVars(nil) },
			wantEnv:  []string{},
			wantKeys: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := tt.build()
			if got := v.Env(); !slices.Equal(got, tt.wantEnv) {
				t.Errorf("Env() = %q, want %q", got, tt.wantEnv)
			}
			if got := v.Keys(); !slices.Equal(got, tt.wantKeys) {
				t.Errorf("Keys() = %q, want %q", got, tt.wantKeys)
			}
			for _, kv := range tt.wantEnv {
				k, want, _ := strings.Cut(kv, "=")
				if got, ok := v.Get(k); !ok || got != want {
					t.Errorf("Get(%q) = %q, %v; want %q, true", k, got, ok, want)
				}
			}
			if got, ok := v.Get("NOT_SET"); ok || got != "" {
				t.Errorf("Get(NOT_SET) = %q, %v; want \"\", false", got, ok)
			}
		})
	}
}

func TestVarsSetToEmptyIsSet(t *testing.T) {
	v := NewVars([]string{"A=1"})
	v.Set("A", "")
	if got, ok := v.Get("A"); !ok || got != "" {
		t.Errorf("Get(A) = %q, %v; want \"\", true", got, ok)
	}
}

func TestVarsNil(t *testing.T) {
	var v *Vars
	if got, ok := v.Get("A"); ok || got != "" {
		t.Errorf("nil Get = %q, %v", got, ok)
	}
	if got := v.Keys(); got != nil {
		t.Errorf("nil Keys = %q", got)
	}
}

func TestVarsCloneAndKeysAreIndependent(t *testing.T) {
	v := NewVars([]string{"A=1", "B=2"})
	c := v.Clone()
	c.Set("A", "changed")
	c.Set("C", "3")
	if got, want := v.Env(), []string{"A=1", "B=2"}; !slices.Equal(got, want) {
		t.Errorf("original after Clone+Set = %q, want %q", got, want)
	}
	if got, want := c.Env(), []string{"A=changed", "B=2", "C=3"}; !slices.Equal(got, want) {
		t.Errorf("clone = %q, want %q", got, want)
	}
	keys := v.Keys()
	keys[0] = "MUTATED"
	if got := v.Keys()[0]; got != "A" {
		t.Errorf("Keys() aliases internal state: first key now %q", got)
	}
}

func TestPlatformArgs(t *testing.T) {
	v := PlatformArgs(Platform{"linux", "arm", "v7"}, Platform{"linux", "amd64", ""}, "")
	want := []string{
		"BUILDPLATFORM=linux/amd64", "BUILDOS=linux", "BUILDOSVERSION=", "BUILDARCH=amd64", "BUILDVARIANT=",
		"TARGETPLATFORM=linux/arm/v7", "TARGETOS=linux", "TARGETOSVERSION=", "TARGETARCH=arm", "TARGETVARIANT=v7",
		"TARGETSTAGE=default",
	}
	if got := v.Env(); !slices.Equal(got, want) {
		t.Errorf("PlatformArgs = %q\nwant %q", got, want)
	}
	if got, ok := PlatformArgs(Platform{"linux", "amd64", ""}, Platform{"linux", "amd64", ""}, "build").Get("TARGETSTAGE"); !ok || got != "build" {
		t.Errorf("TARGETSTAGE = %q, want build", got)
	}
}

func TestTargetStage(t *testing.T) {
	d, err := Parse("Dockerfile", []byte("FROM a AS Build\nFROM b AS final\n"))
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]string{"": "final", "Build": "Build", "build": "build"} {
		if got := d.TargetStage(target); got != want {
			t.Errorf("TargetStage(%q) = %q, want %q", target, got, want)
		}
	}
	d, err = Parse("Dockerfile", []byte("FROM a\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := PlatformArgs(Platform{"linux", "amd64", ""}, Platform{"linux", "amd64", ""}, d.TargetStage("")).Get("TARGETSTAGE"); got != "default" {
		t.Errorf("TARGETSTAGE of an unnamed last stage = %q, want default", got)
	}
}

func TestGlobalArgs(t *testing.T) {
	predefined := PlatformArgs(Platform{"linux", "arm64", "v8"}, Platform{"linux", "amd64", ""}, "")
	tests := []struct {
		name      string
		src       string
		buildArgs map[string]string
		want      map[string]string // key -> value; "<unset>" means not defined
	}{
		{
			name: "default",
			src:  "ARG V=1\nFROM alpine\n",
			want: map[string]string{"V": "1"},
		},
		{
			name:      "build-arg wins over default",
			src:       "ARG V=1\nFROM alpine\n",
			buildArgs: map[string]string{"V": "2"},
			want:      map[string]string{"V": "2"},
		},
		{
			name:      "build-arg wins even when the default would fail",
			src:       "ARG V=${MISSING:?never evaluated}\nFROM alpine\n",
			buildArgs: map[string]string{"V": "ok"},
			want:      map[string]string{"V": "ok"},
		},
		{
			name:      "build-arg value is not expanded",
			src:       "ARG A=1\nARG V\nFROM alpine\n",
			buildArgs: map[string]string{"V": "$A"},
			want:      map[string]string{"V": "$A"},
		},
		{
			name:      "build-arg with empty value is set",
			src:       "ARG V=default\nFROM alpine\n",
			buildArgs: map[string]string{"V": ""},
			want:      map[string]string{"V": ""},
		},
		{
			name: "default refers to earlier global",
			src:  "ARG REG=docker.io\nARG IMG=${REG}/library/alpine\nFROM $IMG\n",
			want: map[string]string{"IMG": "docker.io/library/alpine"},
		},
		{
			name:      "default refers to earlier global set by build-arg",
			src:       "ARG REG=docker.io\nARG IMG=${REG}/alpine\nFROM $IMG\n",
			buildArgs: map[string]string{"REG": "ghcr.io"},
			want:      map[string]string{"REG": "ghcr.io", "IMG": "ghcr.io/alpine"},
		},
		{
			name: "default refers to later global: not yet defined",
			src:  "ARG IMG=${REG}/alpine\nARG REG=docker.io\nFROM alpine\n",
			want: map[string]string{"IMG": "/alpine", "REG": "docker.io"},
		},
		{
			name: "default refers to predefined platform args",
			src:  "ARG IMG=alpine:${TARGETARCH}${TARGETVARIANT:+-$TARGETVARIANT}\nARG B=$BUILDPLATFORM\nFROM $IMG\n",
			want: map[string]string{"IMG": "alpine:arm64-v8", "B": "linux/amd64"},
		},
		{
			name: "several ARGs on one line see each other in order",
			src:  "ARG A=x B=${A}y\nFROM alpine\n",
			want: map[string]string{"A": "x", "B": "xy"},
		},
		{
			name: "redeclared global refers to its old value",
			src:  "ARG V=1\nARG V=${V}2\nFROM alpine\n",
			want: map[string]string{"V": "12"},
		},
		{
			name: "quotes in defaults are removed, single quotes stop expansion",
			src:  "ARG A=\"a b\" B='$A' C=\"$A\"\nFROM alpine\n",
			want: map[string]string{"A": "a b", "B": "$A", "C": "a b"},
		},
		{
			name: "declared without default and no build-arg is unset",
			src:  "ARG V\nFROM alpine\n",
			want: map[string]string{"V": "<unset>"},
		},
		{
			name:      "undeclared build-args are ignored",
			src:       "ARG V=1\nFROM alpine\n",
			buildArgs: map[string]string{"OTHER": "x"},
			want:      map[string]string{"OTHER": "<unset>", "V": "1"},
		},
		{
			name: "ARGs after the first FROM are not global",
			src:  "ARG G=1\nFROM alpine\nARG S=2\n",
			want: map[string]string{"G": "1", "S": "<unset>"},
		},
		{
			// BuildKit's defaultArgs lets --build-arg override a predefined
			// platform ARG even when no global ARG declares it.
			name:      "build-arg overrides predefined platform arg",
			src:       "FROM alpine:$TARGETARCH\n",
			buildArgs: map[string]string{"TARGETARCH": "riscv64"},
			want:      map[string]string{"TARGETARCH": "riscv64", "TARGETOS": "linux"},
		},
		{
			name: "predefined platform args are present without declaration",
			src:  "FROM alpine\n",
			want: map[string]string{"TARGETPLATFORM": "linux/arm64/v8", "BUILDARCH": "amd64", "BUILDVARIANT": ""},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			df := mustParse(t, tt.src)
			before := predefined.Env()
			got, err := df.GlobalArgs(tt.buildArgs, predefined)
			if err != nil {
				t.Fatalf("GlobalArgs: %v", err)
			}
			for k, want := range tt.want {
				v, ok := got.Get(k)
				if want == "<unset>" {
					if ok {
						t.Errorf("%s = %q, want unset", k, v)
					}
					continue
				}
				if !ok || v != want {
					t.Errorf("%s = %q (set %v), want %q", k, v, ok, want)
				}
			}
			if after := predefined.Env(); !slices.Equal(before, after) {
				t.Errorf("GlobalArgs changed predefined: %q -> %q", before, after)
			}
		})
	}
}

func TestGlobalArgsOrder(t *testing.T) {
	df := mustParse(t, "ARG B=2\nARG A=1\nARG TARGETOS=plan9\nFROM alpine\n")
	predefined := NewVars([]string{"TARGETOS=linux", "TARGETARCH=amd64"})
	got, err := df.GlobalArgs(nil, predefined)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"TARGETOS=plan9", "TARGETARCH=amd64", "B=2", "A=1"}
	if env := got.Env(); !slices.Equal(env, want) {
		t.Errorf("Env() = %q, want %q", env, want)
	}
}

func TestGlobalArgsError(t *testing.T) {
	// The default is quoted: ARG splits unquoted words on whitespace.
	df := mustParse(t, "ARG OK=1\n\nARG V=\"${MISSING:?is required}\"\nFROM alpine\n")
	_, err := df.GlobalArgs(nil, NewVars(nil))
	var de *Error
	if !errors.As(err, &de) {
		t.Fatalf("err = %v (%T), want *Error", err, err)
	}
	if want := `Dockerfile:3: failed to process "\"${MISSING:?is required}\"": MISSING: is required`; err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

func TestStageIndex(t *testing.T) {
	df := mustParse(t, `FROM alpine AS Builder
FROM alpine
FROM builder AS test
`)
	tests := []struct {
		ref    string
		want   int
		wantOK bool
	}{
		{"builder", 0, true},
		{"BUILDER", 0, true},
		{"Builder", 0, true},
		{"test", 2, true},
		{"0", 0, true},
		{"1", 1, true},
		{"2", 2, true},
		{"3", 0, false},
		{"-1", 0, false},
		{"", 0, false},
		{"alpine", 0, false},
		{"docker.io/library/alpine:3", 0, false},
	}
	for _, tt := range tests {
		got, ok := df.StageIndex(tt.ref)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("StageIndex(%q) = %d, %v; want %d, %v", tt.ref, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestTarget(t *testing.T) {
	df := mustParse(t, `FROM alpine AS Builder
FROM alpine
FROM builder AS test
FROM scratch AS release
`)
	tests := []struct {
		name, target string
		want         int
		wantErr      string
	}{
		{name: "empty is last stage", target: "", want: 3},
		{name: "by name", target: "test", want: 2},
		{name: "case-insensitive", target: "BUILDER", want: 0},
		{name: "unknown lists named stages", target: "nope",
			wantErr: `Dockerfile: target stage "nope" could not be found (stages: builder, test, release)`},
		{name: "index is not a target", target: "1",
			wantErr: `Dockerfile: target stage "1" could not be found (stages: builder, test, release)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := df.Target(tt.target)
			if tt.wantErr != "" {
				var de *Error
				if !errors.As(err, &de) || de.Line != 0 {
					t.Fatalf("err = %v (%T), want *Error without a line", err, err)
				}
				if err.Error() != tt.wantErr {
					t.Errorf("err = %q\nwant  %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("Target(%q) = %d, %v; want %d", tt.target, got, err, tt.want)
			}
		})
	}
}

// TestTargetDuplicateName: BuildKit allows two stages with one name (a lint
// warning only); --target then picks the last, because its name map is
// overwritten as stages are added (dockerfile2llb dispatchStates).
func TestTargetDuplicateName(t *testing.T) {
	df := mustParse(t, "FROM alpine AS a\nFROM busybox AS A\nFROM scratch\n")
	got, err := df.Target("a")
	if err != nil || got != 1 {
		t.Errorf("Target(a) = %d, %v; want 1 (the last stage named a)", got, err)
	}
}

// TestStageIndexDuplicateName: COPY --from=<name> resolves, like --target,
// through BuildKit's name map, so the last stage with the name wins.
func TestStageIndexDuplicateName(t *testing.T) {
	df := mustParse(t, "FROM alpine AS a\nFROM busybox AS A\nFROM scratch\n")
	if got, ok := df.StageIndex("a"); !ok || got != 1 {
		t.Errorf("StageIndex(a) = %d, %v; want 1 (the last stage named a)", got, ok)
	}
}

func TestTargetNoNamedStages(t *testing.T) {
	df := mustParse(t, "FROM alpine\n")
	_, err := df.Target("x")
	if want := `Dockerfile: target stage "x" could not be found (stages: )`; err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
}

func TestExpandWord(t *testing.T) {
	env := NewVars([]string{"A=1", "EMPTY="})
	tests := []struct{ in, want string }{
		{"$A", "1"},
		{"${A}x", "1x"},
		{"${UNSET:-def}", "def"},
		{"${EMPTY:-def}", "def"},
		{"${EMPTY-def}", ""},
		{"${A:+alt}", "alt"},
		{`"$A b"`, "1 b"},
		{`'$A'`, "$A"},
		{`\$A`, "$A"},
	}
	df := mustParse(t, "FROM alpine\n")
	for _, tt := range tests {
		got, err := df.ExpandWord(tt.in, env)
		if err != nil || got != tt.want {
			t.Errorf("ExpandWord(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestExpandWordBacktickEscape(t *testing.T) {
	df := mustParse(t, "# escape=`\nFROM alpine\n")
	env := NewVars([]string{"A=1"})
	for in, want := range map[string]string{
		`C:\dir\$A`: `C:\dir\1`,
		"`$A":       "$A",
	} {
		got, err := df.ExpandWord(in, env)
		if err != nil || got != want {
			t.Errorf("ExpandWord(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// expandAll parses src, expands every command of the last stage against
// env and returns the stage's commands.
func expandAll(t *testing.T, src string, env *Vars) []instructions.Command {
	t.Helper()
	df := mustParse(t, src)
	cmds := df.Stages[len(df.Stages)-1].Commands
	for _, c := range cmds {
		if err := df.Expand(c, env); err != nil {
			t.Fatalf("Expand %s: %v", c.Name(), err)
		}
	}
	return cmds
}

func TestExpandCopy(t *testing.T) {
	env := NewVars([]string{"SRC=app.bin", "DEST=/opt/app", "OWNER=1000", "MODE=0755", "STAGE=builder"})
	cmds := expandAll(t, `FROM alpine AS builder
FROM alpine
COPY --from=$STAGE --chown=$OWNER:$OWNER --chmod=$MODE $SRC "${SRC}.sig" ${DEST}/
ADD --chown=${OWNER} --checksum=${UNSET:-sha256:0} $SRC $DEST
`, env)
	c := cmds[0].(*instructions.CopyCommand)
	if want := []string{"app.bin", "app.bin.sig"}; !slices.Equal(c.SourcePaths, want) {
		t.Errorf("COPY sources = %q, want %q", c.SourcePaths, want)
	}
	if c.DestPath != "/opt/app/" {
		t.Errorf("COPY dest = %q", c.DestPath)
	}
	if c.Chown != "1000:1000" || c.Chmod != "0755" {
		t.Errorf("COPY chown, chmod = %q, %q", c.Chown, c.Chmod)
	}
	// BuildKit does not expand --from: a variable there is an error at
	// build time ("variable expansion is not supported for --from").
	if c.From != "$STAGE" {
		t.Errorf("COPY --from = %q, want it left as $STAGE", c.From)
	}
	a := cmds[1].(*instructions.AddCommand)
	if !slices.Equal(a.SourcePaths, []string{"app.bin"}) || a.DestPath != "/opt/app" || a.Chown != "1000" || a.Checksum != "sha256:0" {
		t.Errorf("ADD = %q -> %q chown %q checksum %q", a.SourcePaths, a.DestPath, a.Chown, a.Checksum)
	}
}

func TestExpandHeredoc(t *testing.T) {
	env := NewVars([]string{"NAME=world"})
	cmds := expandAll(t, `FROM alpine
COPY <<EOF /unquoted
hello $NAME "double" 'single' ${NAME}s \$NAME
EOF
COPY <<'EOF' /quoted
hello $NAME "double" 'single'
EOF
COPY <<"EOF" /dquoted
hello $NAME
EOF
COPY <<A <<'B' /two/
a=$NAME
A
b=$NAME
B
`, env)
	tests := []struct {
		cmd  int
		file int
		want string
	}{
		{0, 0, "hello world \"double\" 'single' worlds $NAME\n"},
		{1, 0, "hello $NAME \"double\" 'single'\n"},
		{2, 0, "hello $NAME\n"},
		{3, 0, "a=world\n"},
		{3, 1, "b=$NAME\n"},
	}
	for _, tt := range tests {
		c := cmds[tt.cmd].(*instructions.CopyCommand)
		if got := c.SourceContents[tt.file].Data; got != tt.want {
			t.Errorf("COPY %d heredoc %d = %q, want %q", tt.cmd, tt.file, got, tt.want)
		}
	}
}

// TestExpandHeredocBacktickFile: heredoc bodies always use a backslash
// escape, as BuildKit's dispatcher does, whatever `# escape=` says.
func TestExpandHeredocBacktickFile(t *testing.T) {
	env := NewVars([]string{"X=1"})
	cmds := expandAll(t, "# escape=`\nFROM alpine\nCOPY <<EOF /f\n\\$X `$X $X\nEOF\n", env)
	if got, want := cmds[0].(*instructions.CopyCommand).SourceContents[0].Data, "$X `1 1\n"; got != want {
		t.Errorf("heredoc = %q, want %q", got, want)
	}
}

func TestExpandConfigInstructions(t *testing.T) {
	env := NewVars([]string{"V=1.2", "HOME=/home/app", "U=app", "SIG=SIGINT"})
	cmds := expandAll(t, `FROM alpine
ENV VERSION=$V PATH=$HOME/bin:$PATH "Q"="a ${V}"
LABEL "org.opencontainers.image.version"=$V key-$V='$V'
WORKDIR $HOME/src
USER $U:${U}
VOLUME $HOME/data
STOPSIGNAL $SIG
EXPOSE $V
ARG D=$V
ARG $V
RUN echo $V
CMD echo $V
`, env)
	e := cmds[0].(*instructions.EnvCommand)
	wantEnv := instructions.KeyValuePairs{{Key: "VERSION", Value: "1.2"}, {Key: "PATH", Value: "/home/app/bin:"}, {Key: "Q", Value: "a 1.2"}}
	if !slices.Equal(e.Env, wantEnv) {
		t.Errorf("ENV = %+v\nwant  %+v", e.Env, wantEnv)
	}
	l := cmds[1].(*instructions.LabelCommand)
	wantLabels := instructions.KeyValuePairs{{Key: "org.opencontainers.image.version", Value: "1.2"}, {Key: "key-1.2", Value: "$V"}}
	if !slices.Equal(l.Labels, wantLabels) {
		t.Errorf("LABEL = %+v\nwant  %+v", l.Labels, wantLabels)
	}
	if got := cmds[2].(*instructions.WorkdirCommand).Path; got != "/home/app/src" {
		t.Errorf("WORKDIR = %q", got)
	}
	if got := cmds[3].(*instructions.UserCommand).User; got != "app:app" {
		t.Errorf("USER = %q", got)
	}
	if got := cmds[4].(*instructions.VolumeCommand).Volumes; !slices.Equal(got, []string{"/home/app/data"}) {
		t.Errorf("VOLUME = %q", got)
	}
	if got := cmds[5].(*instructions.StopSignalCommand).Signal; got != "SIGINT" {
		t.Errorf("STOPSIGNAL = %q", got)
	}
	// EXPOSE is expanded by BuildKit's dispatcher, not by Expand: the
	// instruction does not implement SupportsSingleWordExpansion.
	if got := cmds[6].(*instructions.ExposeCommand).Ports; !slices.Equal(got, []string{"$V"}) {
		t.Errorf("EXPOSE = %q, want it unexpanded", got)
	}
	// ARG is left alone: its default is evaluated when it is declared.
	a := cmds[7].(*instructions.ArgCommand)
	if a.Args[0].Key != "D" || a.Args[0].Value == nil || *a.Args[0].Value != "$V" {
		t.Errorf("ARG D = %+v, want default left as $V", a.Args[0])
	}
	if got := cmds[8].(*instructions.ArgCommand).Args[0].Key; got != "$V" {
		t.Errorf("ARG $V key = %q, want it unexpanded", got)
	}
	// RUN and CMD text is for the shell: not expanded.
	if got := cmds[9].(*instructions.RunCommand).CmdLine; !slices.Equal(got, []string{"echo $V"}) {
		t.Errorf("RUN = %q", got)
	}
	if got := cmds[10].(*instructions.CmdCommand).CmdLine; !slices.Equal(got, []string{"echo $V"}) {
		t.Errorf("CMD = %q", got)
	}
}

func TestExpandRunMounts(t *testing.T) {
	// Defaults that BuildKit fills in later (a secret's target, a cache's
	// sharing mode) are not set by the instructions package.
	env := NewVars([]string{"CACHE=/root/.cache", "ID=go"})
	cmds := expandAll(t, `FROM alpine
RUN --mount=type=cache,target=$CACHE,id=${ID}build,sharing=locked go build
RUN --mount=type=bind,from=builder,source=/out,target=/in,rw --mount=type=secret,id=token,env=TOKEN,required cat
RUN --mount=type=cache,target=/c,uid=1000,gid=1000,mode=0700 ls
RUN --mount=target=/src ls
`, env)
	want := [][]string{
		{"type=cache,target=/root/.cache,id=gobuild,sharing=locked"},
		{"type=bind,from=builder,source=/out,target=/in", "type=secret,id=token,ro,required,env=TOKEN"},
		{"type=cache,target=/c,mode=0700,uid=1000,gid=1000"},
		{"type=bind,target=/src,ro"},
	}
	for i, cmd := range cmds {
		var got []string
		for _, m := range instructions.GetMounts(cmd.(*instructions.RunCommand)) {
			got = append(got, mountString(m))
		}
		if !slices.Equal(got, want[i]) {
			t.Errorf("RUN %d mounts = %q\nwant %q", i, got, want[i])
		}
	}
}

func TestExpandErrorsHaveLines(t *testing.T) {
	tests := []struct{ name, src, want string }{
		{
			name: "required variable",
			src:  "FROM alpine\n\nWORKDIR ${DIR:?set DIR}\n",
			want: `Dockerfile:3: failed to process "${DIR:?set DIR}": DIR: set DIR`,
		},
		{
			// BuildKit parses --mount values only once variables are known,
			// so a bad mount type passes Parse and fails here.
			name: "bad mount type",
			src:  "FROM alpine\nRUN \\\n  --mount=type=nope,target=/x true\n",
			want: "Dockerfile:2: unsupported mount type \"nope\"",
		},
		{
			name: "heredoc",
			src:  "FROM alpine\nCOPY <<EOF /f\n${X:?need X}\nEOF\n",
			want: `Dockerfile:2: failed to process "${X:?need X}\n": X: need X`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			df := mustParse(t, tt.src)
			var err error
			for _, c := range df.Stages[0].Commands {
				if err = df.Expand(c, NewVars(nil)); err != nil {
					break
				}
			}
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("err = %v (%T), want *Error", err, err)
			}
			if err.Error() != tt.want {
				t.Errorf("err = %q\nwant  %q", err, tt.want)
			}
		})
	}
}
