package solver

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/kiln-build/kiln/internal/dockerfile"
	"github.com/kiln-build/kiln/internal/output"
	"github.com/kiln-build/kiln/internal/progress"
)

// buildScratch builds a Dockerfile that needs no registry into an OCI
// layout and returns the image.
func buildScratch(t *testing.T, dockerfile string, files map[string]string, mutate func(*Options)) (v1.Image, error) {
	t.Helper()
	ctxDir := t.TempDir()
	for p, c := range files {
		full := filepath.Join(ctxDir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "oci")
	spec, err := output.Parse("type=oci,tar=false,dest=" + out)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		ContextDir:  ctxDir,
		Dockerfile:  []byte(dockerfile),
		Parallelism: 2,
		Outputs:     []output.Spec{spec},
		TempDir:     t.TempDir(),
	}
	if mutate != nil {
		mutate(&o)
	}
	if _, err := Build(context.Background(), o); err != nil {
		return nil, err
	}
	idx, err := layout.ImageIndexFromPath(out)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img, nil
}

func mustBuild(t *testing.T, dockerfile string, files map[string]string, mutate func(*Options)) *v1.ConfigFile {
	t.Helper()
	img, err := buildScratch(t, dockerfile, files, mutate)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func TestArgScoping(t *testing.T) {
	df := `ARG GLOBAL=g
ARG OVERRIDDEN=default
FROM scratch
ENV SEEN_GLOBAL=${GLOBAL}-x
ARG GLOBAL
ARG OVERRIDDEN
ARG LOCAL=l-${GLOBAL}
ENV AFTER=${GLOBAL} OV=${OVERRIDDEN} LOC=${LOCAL}
`
	cf := mustBuild(t, df, nil, func(o *Options) { o.BuildArgs = map[string]string{"OVERRIDDEN": "cli", "UNUSED": "u"} })
	env := envMap(cf.Config.Env)
	want := map[string]string{
		"SEEN_GLOBAL": "-x", // a global ARG is invisible in a stage until redeclared
		"AFTER":       "g",  // a bare ARG inherits the global value
		"OV":          "cli",
		"LOC":         "l-g",
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s = %q, want %q (env %q)", k, env[k], v, cf.Config.Env)
		}
	}
	for _, k := range []string{"GLOBAL", "OVERRIDDEN", "LOCAL", "UNUSED"} {
		if _, ok := env[k]; ok {
			t.Errorf("ARG %s leaked into the image Env", k)
		}
	}
	if env["PATH"] != defaultPath {
		t.Errorf("scratch PATH = %q, want BuildKit's default", env["PATH"])
	}
}

func TestEnvExpandsAgainstPreviousValues(t *testing.T) {
	// Docker expands every word of one ENV before applying any of it.
	cf := mustBuild(t, "FROM scratch\nENV A=1\nENV A=2 B=$A\nENV C=\"$A $B\" D='$A'\n", nil, nil)
	env := envMap(cf.Config.Env)
	if env["A"] != "2" || env["B"] != "1" || env["C"] != "2 1" || env["D"] != "$A" {
		t.Errorf("env = %q", cf.Config.Env)
	}
}

func TestEntrypointResetsInheritedCmd(t *testing.T) {
	df := `FROM scratch AS parent
CMD ["parent-cmd"]
FROM parent AS child
ENTRYPOINT ["/ep"]
FROM parent AS both
CMD ["own"]
ENTRYPOINT ["/ep"]
`
	child := mustBuild(t, df, nil, func(o *Options) { o.Target = "child" })
	if child.Config.Cmd != nil {
		t.Errorf("child Cmd = %q: an ENTRYPOINT must reset a CMD inherited from the base", child.Config.Cmd)
	}
	both := mustBuild(t, df, nil, func(o *Options) { o.Target = "both" })
	if !slices.Equal(both.Config.Cmd, []string{"own"}) {
		t.Errorf("Cmd = %q: a CMD set in the same stage survives ENTRYPOINT", both.Config.Cmd)
	}
}

func TestShellFormUsesShell(t *testing.T) {
	cf := mustBuild(t, "FROM scratch\nCMD echo a\nSHELL [\"/bin/bash\", \"-xc\"]\nENTRYPOINT run it\n", nil, nil)
	if !slices.Equal(cf.Config.Cmd, []string{"/bin/sh", "-c", "echo a"}) {
		t.Errorf("Cmd = %q", cf.Config.Cmd)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/bin/bash", "-xc", "run it"}) {
		t.Errorf("Entrypoint = %q", cf.Config.Entrypoint)
	}
	if !cf.Config.ArgsEscaped {
		t.Error("ArgsEscaped must be set as BuildKit does")
	}
}

func TestWorkdirRelativeAndLayers(t *testing.T) {
	img, err := buildScratch(t, "FROM scratch\nWORKDIR /a\nWORKDIR b\nWORKDIR ../c\nWORKDIR /\n", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if cf.Config.WorkingDir != "/" {
		t.Errorf("WorkingDir = %q", cf.Config.WorkingDir)
	}
	var got []string
	for _, h := range cf.History {
		got = append(got, h.CreatedBy)
	}
	want := []string{"WORKDIR /a", "WORKDIR /a/b", "WORKDIR /a/c", "WORKDIR /"}
	if !slices.Equal(got, want) {
		t.Errorf("history %q, want %q", got, want)
	}
	layers, _ := img.Layers()
	if len(layers) != 3 {
		t.Errorf("%d layers: every WORKDIR but / makes one, as BuildKit", len(layers))
	}
}

func TestHealthcheckAllOptionsAndNone(t *testing.T) {
	img, err := buildScratch(t, "FROM scratch\nHEALTHCHECK --interval=5s --timeout=2s --start-period=1s --start-interval=3s --retries=4 CMD [\"/probe\"]\n", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Config struct {
			Healthcheck map[string]any
		} `json:"config"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	hc := doc.Config.Healthcheck
	want := map[string]float64{"Interval": 5e9, "Timeout": 2e9, "StartPeriod": 1e9, "StartInterval": 3e9, "Retries": 4}
	for k, v := range want {
		if hc[k] != v {
			t.Errorf("Healthcheck.%s = %v, want %v (config %s)", k, hc[k], v, raw)
		}
	}
	// The manifest must point at the patched config.
	m, _ := img.Manifest()
	h, _, _ := v1.SHA256(strings.NewReader(string(raw)))
	if m.Config.Digest != h {
		t.Errorf("manifest names config %s, the config is %s", m.Config.Digest, h)
	}

	cf := mustBuild(t, "FROM scratch\nHEALTHCHECK CMD /x\nHEALTHCHECK NONE\n", nil, nil)
	if cf.Config.Healthcheck == nil || !slices.Equal(cf.Config.Healthcheck.Test, []string{"NONE"}) {
		t.Errorf("HEALTHCHECK NONE gave %+v", cf.Config.Healthcheck)
	}
}

func TestLabelsFromFlagWin(t *testing.T) {
	cf := mustBuild(t, "FROM scratch\nLABEL a=file b=file\n", nil, func(o *Options) { o.Labels = map[string]string{"b": "flag", "c": "flag"} })
	want := map[string]string{"a": "file", "b": "flag", "c": "flag"}
	for k, v := range want {
		if cf.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, cf.Config.Labels[k], v)
		}
	}
}

func TestEpochFixesCreated(t *testing.T) {
	epoch := time.Unix(1234567890, 0).UTC()
	cf := mustBuild(t, "FROM scratch\nCOPY a /a\nENV X=1\n", map[string]string{"a": "a"}, func(o *Options) { o.Epoch = &epoch })
	if !cf.Created.Time.Equal(epoch) {
		t.Errorf("created %v", cf.Created)
	}
	for _, h := range cf.History {
		if !h.Created.Time.Equal(epoch) {
			t.Errorf("history %q created %v", h.CreatedBy, h.Created)
		}
	}
}

func TestOnlyNeededStagesRun(t *testing.T) {
	df := "FROM scratch AS broken\nCOPY missing /x\nFROM scratch AS ok\nCOPY a /a\n"
	if _, err := buildScratch(t, df, map[string]string{"a": "a"}, func(o *Options) { o.Target = "ok" }); err != nil {
		t.Fatalf("building target ok ran the broken stage it does not need: %v", err)
	}
	_, err := buildScratch(t, df, map[string]string{"a": "a"}, func(o *Options) { o.Target = "broken" })
	var de *dockerfile.Error
	if !errors.As(err, &de) || de.Line != 2 {
		t.Fatalf("err = %v, want a Dockerfile error on line 2", err)
	}
}

func TestCancelledBuildStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	spec, _ := output.Parse("type=oci,tar=false,dest=" + filepath.Join(t.TempDir(), "oci"))
	_, err := Build(ctx, Options{ContextDir: t.TempDir(), Dockerfile: []byte("FROM scratch\nWORKDIR /x\n"), Outputs: []output.Spec{spec}, Parallelism: 1})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestParsePort(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		bad  bool
	}{
		{in: "80", want: []string{"80/tcp"}},
		{in: "53/UDP", want: []string{"53/udp"}},
		{in: "8000-8002/tcp", want: []string{"8000/tcp", "8001/tcp", "8002/tcp"}},
		{in: "127.0.0.1:8080:80", want: []string{"80/tcp"}},
		{in: "70000", bad: true},
		{in: "80/icmp", bad: true},
		{in: "9-3", bad: true},
		{in: "http", bad: true},
	}
	for _, tt := range tests {
		got, err := parsePort(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("parsePort(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("parsePort(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestDestPath(t *testing.T) {
	tests := []struct{ wd, p, want string }{
		{"/", "app", "/app"},
		{"/w", "app", "/w/app"},
		{"/w", "app/", "/w/app/"},
		{"/w", ".", "/w/"},
		{"/w", "./", "/w/"},
		{"/w", "/abs/", "/abs/"},
		{"/w", "../up", "/up"},
		{"", "x", "/x"},
		{"/w", "/", "/"},
	}
	for _, tt := range tests {
		if got := destPath(tt.wd, tt.p); got != tt.want {
			t.Errorf("destPath(%q, %q) = %q, want %q", tt.wd, tt.p, got, tt.want)
		}
	}
}

func TestPlatformArgsAndLink(t *testing.T) {
	df := `ARG TARGETARCH
FROM --platform=$BUILDPLATFORM scratch AS b
ARG TARGETPLATFORM
ARG TARGETOS
ARG TARGETARCH
ARG BUILDARCH
ARG TARGETSTAGE
ARG TARGETOSVERSION
ARG BUILDOSVERSION
ENV TP=$TARGETPLATFORM TO=$TARGETOS TA=$TARGETARCH BA=$BUILDARCH TS=$TARGETSTAGE OSV=${TARGETOSVERSION-unset}${BUILDOSVERSION-unset}
COPY --link a /a
`
	img, err := buildScratch(t, df, map[string]string{"a": "a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	env := envMap(cf.Config.Env)
	// TARGETSTAGE is the last stage's name without --target; the OS
	// versions are defined, and empty on Linux, as in BuildKit.
	if env["TP"] != "linux/amd64" || env["TO"] != "linux" || env["TA"] != "amd64" || env["BA"] != "amd64" || env["TS"] != "b" || env["OSV"] != "" {
		t.Errorf("predefined platform ARGs: %q", cf.Config.Env)
	}
	if layers, _ := img.Layers(); len(layers) != 1 {
		t.Errorf("COPY --link made %d layers, want 1", len(layers))
	}
}

type recorder struct {
	mu     sync.Mutex
	events []progress.Event
	names  map[int]string
}

func (r *recorder) Emit(e progress.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names == nil {
		r.names = map[int]string{}
	}
	if e.Name != "" {
		r.names[e.ID] = e.Name
	}
	r.events = append(r.events, e)
}

// Independent stages overlap in time: the second starts before the first
// finishes.
func TestIndependentStagesRunConcurrently(t *testing.T) {
	big := strings.Repeat("kiln builds stages in parallel\n", 1<<20) // ~31 MiB each
	df := "FROM scratch AS one\nCOPY one /one\nFROM scratch AS two\nCOPY two /two\nFROM scratch\nCOPY --from=one /one /one\nCOPY --from=two /two /two\n"
	rec := &recorder{}
	if _, err := buildScratch(t, df, map[string]string{"one": big, "two": big + "x"}, func(o *Options) { o.Progress = rec }); err != nil {
		t.Fatal(err)
	}
	idx := func(prefix string, status progress.Status) int {
		for i, e := range rec.events {
			if e.Status == status && strings.HasPrefix(rec.names[e.ID], prefix) {
				return i
			}
		}
		t.Fatalf("no %v event for %q", status, prefix)
		return -1
	}
	oneStart, oneDone := idx("[one ", progress.Started), idx("[one ", progress.Done)
	twoStart, twoDone := idx("[two ", progress.Started), idx("[two ", progress.Done)
	if !(oneStart < twoDone && twoStart < oneDone) {
		t.Errorf("stages one [%d,%d] and two [%d,%d] did not overlap", oneStart, oneDone, twoStart, twoDone)
	}
	final := idx("[stage-2 ", progress.Started)
	if final < oneDone || final < twoDone {
		t.Errorf("the final stage started before the stages it copies from finished")
	}
}

// A stage's ONBUILD instructions fire in stages built FROM it, and are not
// inherited further.
func TestOnBuildFromStage(t *testing.T) {
	df := "FROM scratch AS parent\nONBUILD COPY a /from-trigger\nONBUILD LABEL trig=1\nFROM parent\nCOPY b /b\n"
	files := map[string]string{"a": "a", "b": "b"}
	img, err := buildScratch(t, df, files, nil)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if len(cf.Config.OnBuild) != 0 || cf.Config.Labels["trig"] != "1" {
		t.Errorf("OnBuild %q, labels %v: the triggers must fire once and not carry over", cf.Config.OnBuild, cf.Config.Labels)
	}
	if layers, _ := img.Layers(); len(layers) != 2 {
		t.Errorf("%d layers, want the trigger's COPY and the stage's own", len(layers))
	}
	parent := mustBuild(t, df, files, func(o *Options) { o.Target = "parent" })
	if !slices.Equal(parent.Config.OnBuild, []string{"COPY a /from-trigger", "LABEL trig=1"}) {
		t.Errorf("parent OnBuild = %q", parent.Config.OnBuild)
	}
}
