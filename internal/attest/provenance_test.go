package attest

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// update rewrites the golden files: go test ./internal/attest -update
var update = flag.Bool("update", false, "rewrite testdata/*.json from the current output")

var (
	amd64   = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64   = v1.Platform{OS: "linux", Architecture: "arm64"}
	started = time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)
	commit  = "4b220de5058abfd01ff619c9d2ff6b09a049bea0"
)

func hash(t testing.TB, s string) v1.Hash {
	t.Helper()
	h, _, err := v1.SHA256(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// cases are the builds the golden files pin. When the golden files were
// written, each was checked byte for byte against the statement BuildKit
// v0.34.2's own code makes for the same build (provenance.NewPredicate
// over the equivalent Capture, its min-mode scrub, ConvertToSLSA02, and
// in-toto-golang's Statement), in a scratch module outside kiln.
func cases(t testing.TB) map[string]Provenance {
	busybox, alpine, ghcr := hash(t, "busybox index"), hash(t, "alpine index"), hash(t, "ghcr")
	return map[string]Provenance{
		// A local build using everything kiln records: args, labels,
		// target, secrets, ssh, buildx's git info, images written
		// several ways, ADD of a URL and of a git repository.
		"local": {
			BuilderID:      "https://ci.example/run/1",
			DockerfilePath: "Dockerfile",
			Locals:         []string{"dockerfile", "context"},
			BuildArgs:      map[string]string{"A": "1", "B": "x y&<"},
			Labels:         map[string]string{"org.x": "v"},
			Target:         "app",
			Secrets:        []Secret{{ID: "tok", Optional: true}, {ID: "npm", Optional: true}, {ID: "npm"}},
			SSH:            []Secret{{Optional: true}},
			VCS: map[string]string{
				"source": "https://user:pw@github.com/o/r.git", "revision": "abc",
				"localdir:context": ".", "localdir:dockerfile": ".",
			},
			TargetPlatform: amd64,
			Images: []ImageSource{
				{Ref: "busybox", Platform: amd64, Digest: busybox},
				{Ref: "busybox:latest@" + busybox.String(), Platform: amd64, Digest: busybox},
				{Ref: "alpine:3.20", Platform: v1.Platform{OS: "linux", Architecture: "x86_64"}, Digest: alpine},
				{Ref: "alpine", Platform: amd64, Digest: alpine},
				{Ref: "ghcr.io/o/r@" + ghcr.String(), Platform: amd64, Digest: ghcr},
				{Ref: "localhost:5000/x/y:1", Platform: v1.Platform{OS: "linux", Architecture: "aarch64"}, Digest: ghcr},
			},
			HTTP: []HTTPSource{
				{URL: "https://example.com/f.tgz", Digest: hash(t, "file")},
				{URL: "https://a.example.com/f.tgz", Digest: hash(t, "file")},
			},
			Git: []GitSource{{URL: "https://github.com/o/r.git#main", Commit: commit}},
		},
		// A build entirely from a git context: complete materials, no
		// network, so hermetic.
		"git": {
			DockerfilePath: "docker/Dockerfile",
			ContextURI:     "https://tok@github.com/o/r.git#v1:sub",
			ContextDigest:  map[string]string{"sha1": commit},
			TargetPlatform: arm64,
			NoNetwork:      true,
			Reproducible:   true,
			Images:         []ImageSource{{Ref: "alpine:3.20", Platform: arm64, Digest: alpine}},
			Git:            []GitSource{{URL: "https://tok@github.com/o/r.git#v1", Commit: commit}},
		},
		// FROM scratch, nothing else: what every statement has.
		"bare": {
			DockerfilePath: "Dockerfile",
			Locals:         []string{"context", "dockerfile"},
		},
	}
}

func TestStatementGolden(t *testing.T) {
	subjects := []Subject{{Name: "pkg:docker/me/app@1?platform=linux%2Famd64", Digest: map[string]string{"sha256": hash(t, "img").Hex}}}
	for name, p := range cases(t) {
		for _, mode := range []Mode{ModeMin, ModeMax} {
			for _, version := range []Version{SLSA1, SLSA02} {
				t.Run(name+"-"+string(mode)+"-"+string(version), func(t *testing.T) {
					p.Mode, p.Version = mode, version
					p.BuilderPlatform = amd64
					p.InvocationID = "inv1"
					p.StartedOn, p.FinishedOn = started, started.Add(90*time.Second)
					got, err := Statement(subjects, p)
					if err != nil {
						t.Fatal(err)
					}
					var indented bytes.Buffer
					if err := json.Indent(&indented, got, "", "  "); err != nil {
						t.Fatal(err)
					}
					indented.WriteByte('\n')
					checkGolden(t, filepath.Join("testdata", t.Name()[len("TestStatementGolden/"):]+".json"), indented.Bytes())
				})
			}
		}
	}
}

func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the output; got:\n%s", path, got)
	}
}

// TestShape checks the keys BuildKit's readers look up, so a change to
// the golden files that renamed or moved one cannot pass unnoticed.
func TestShape(t *testing.T) {
	p := cases(t)["local"]
	p.BuilderPlatform, p.Mode, p.InvocationID, p.StartedOn, p.FinishedOn = amd64, ModeMax, "inv1", started, started
	for _, tc := range []struct {
		version   Version
		predicate string
		paths     []string
	}{
		{SLSA1, PredicateSLSA1, []string{
			"buildDefinition.buildType",
			"buildDefinition.externalParameters.configSource.path",
			"buildDefinition.externalParameters.request.frontend",
			"buildDefinition.externalParameters.request.args.build-arg:A",
			"buildDefinition.externalParameters.request.args.label:org.x",
			"buildDefinition.externalParameters.request.args.target",
			"buildDefinition.externalParameters.request.locals",
			"buildDefinition.externalParameters.request.secrets",
			"buildDefinition.externalParameters.request.ssh",
			"buildDefinition.internalParameters.builderPlatform",
			"buildDefinition.internalParameters.targetPlatform",
			"buildDefinition.resolvedDependencies",
			"runDetails.builder.id",
			"runDetails.metadata.invocationId",
			"runDetails.metadata.startedOn",
			"runDetails.metadata.finishedOn",
			"runDetails.metadata.buildkit_metadata.vcs.source",
			"runDetails.metadata.buildkit_completeness.request",
			"runDetails.metadata.buildkit_completeness.resolvedDependencies",
		}},
		{SLSA02, PredicateSLSA02, []string{
			"builder.id",
			"buildType",
			"materials",
			"invocation.configSource.entryPoint",
			"invocation.parameters.frontend",
			"invocation.parameters.args.build-arg:A",
			"invocation.parameters.secrets",
			"invocation.environment.platform",
			"metadata.buildInvocationID",
			"metadata.buildStartedOn",
			"metadata.buildFinishedOn",
			"metadata.completeness.parameters",
			"metadata.completeness.environment",
			"metadata.completeness.materials",
			"metadata.reproducible",
			"metadata.https://mobyproject.org/buildkit@v1#metadata.vcs",
		}},
	} {
		p.Version = tc.version
		b, err := Statement(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		var st map[string]any
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		if st["_type"] != StatementType || st["predicateType"] != tc.predicate {
			t.Errorf("%s: _type %v, predicateType %v", tc.version, st["_type"], st["predicateType"])
		}
		if s, ok := st["subject"].([]any); !ok || len(s) != 0 {
			t.Errorf("%s: subject = %#v, want []", tc.version, st["subject"])
		}
		for _, path := range tc.paths {
			if _, ok := lookup(st["predicate"], path); !ok {
				t.Errorf("%s: predicate has no %s", tc.version, path)
			}
		}
	}
}

// lookup follows a dotted path through decoded JSON objects; a key with a
// dot in it (the v0.2 extension keys) is matched whole first.
func lookup(v any, path string) (any, bool) {
	if path == "" {
		return v, true
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, false
	}
	for k, child := range m {
		if path == k {
			return child, true
		}
		if rest, ok := strings.CutPrefix(path, k+"."); ok {
			if got, ok := lookup(child, rest); ok {
				return got, true
			}
		}
	}
	return nil, false
}

// TestMinLeavesOutSecrets: min mode must not name a secret, an ssh
// forward, or a build arg (which often carries a token) in either
// version; max names the ids only.
func TestMinLeavesOutSecrets(t *testing.T) {
	p := Provenance{
		BuilderPlatform: amd64,
		Locals:          []string{"context", "dockerfile"},
		BuildArgs:       map[string]string{"NPM_TOKEN": "hunter2-arg"},
		Labels:          map[string]string{"l": "label-value"},
		Secrets:         []Secret{{ID: "aws-credentials"}},
		SSH:             []Secret{{ID: "deploy-key"}},
	}
	for _, version := range []Version{SLSA1, SLSA02} {
		p.Version = version
		p.Mode = ModeMin
		b, err := Statement(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{"aws-credentials", "deploy-key", "NPM_TOKEN", "hunter2-arg", "label-value", `"secrets"`, `"ssh"`} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s min statement contains %q:\n%s", version, s, b)
			}
		}
		// Leaving the args out makes the request incomplete, and says so.
		if !bytes.Contains(b, []byte(`"request":false`)) && !bytes.Contains(b, []byte(`"parameters":false`)) {
			t.Errorf("%s min statement does not mark the request incomplete:\n%s", version, b)
		}

		p.Mode = ModeMax
		b, err = Statement(nil, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{`"secrets":[{"id":"aws-credentials"}]`, `"ssh":[{"id":"deploy-key"}]`, `"build-arg:NPM_TOKEN":"hunter2-arg"`} {
			if !bytes.Contains(b, []byte(s)) {
				t.Errorf("%s max statement lacks %s:\n%s", version, s, b)
			}
		}
	}
}

// TestMinCompleteWithoutArgs: min with nothing to leave out is complete,
// as in BuildKit, which marks the request incomplete only when it dropped
// an arg.
func TestMinCompleteWithoutArgs(t *testing.T) {
	b, err := Statement(nil, Provenance{BuilderPlatform: amd64, Target: "app", Secrets: []Secret{{ID: "s"}}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"buildkit_completeness":{"request":true,"resolvedDependencies":true}`)) {
		t.Errorf("completeness wrong:\n%s", b)
	}
	if !bytes.Contains(b, []byte(`"args":{"target":"app"}`)) {
		t.Errorf("min dropped the target:\n%s", b)
	}
}

func TestStatementErrors(t *testing.T) {
	for name, p := range map[string]Provenance{
		"mode":             {Mode: "full", BuilderPlatform: amd64},
		"version":          {Version: "v0.1", BuilderPlatform: amd64},
		"builder platform": {},
		"image ref":        {BuilderPlatform: amd64, Images: []ImageSource{{Ref: "Busybox"}}},
	} {
		if _, err := Statement(nil, p); err == nil {
			t.Errorf("%s: Statement succeeded, want an error", name)
		}
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:password@host.tld/this:that": "https://xxxxx:xxxxx@host.tld/this:that",
		"https://user@host.tld/this:that":          "https://xxxxx@host.tld/this:that",
		"https://:password@host.tld/this:that":     "https://:xxxxx@host.tld/this:that",
		"https://host.tld/r.git#main:sub":          "https://host.tld/r.git#main:sub",
		"git@github.com:o/r.git":                   "git@github.com:o/r.git", // not a URL: kept
	} {
		if got := redact(in); got != want {
			t.Errorf("redact(%q) = %q, want %q", in, got, want)
		}
	}
}
