package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// runBounded runs the kiln binary like testenv.Run, but gives up after
// limit: a regression here would otherwise run for many minutes. env
// replaces HOME and the XDG directories only where it names them.
func runBounded(t *testing.T, limit time.Duration, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	home := testenv.Home(t)
	cmd := exec.CommandContext(ctx, testenv.Kiln(t), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CACHE_HOME="+filepath.Join(home, ".cache"),
		"DOCKER_CONFIG="+filepath.Join(home, ".docker"))
	cmd.Env = append(cmd.Env, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("kiln %s: still running after %s\nstderr (tail):\n%s", strings.Join(args, " "), limit, lastBytes(e.String(), 2000))
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	t.Logf("kiln %s: exit %d in %s\nstderr:\n%s", strings.Join(args, " "), code, time.Since(start).Round(time.Millisecond), lastBytes(e.String(), 4000))
	return o.String(), e.String(), code
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// files lists the regular files beneath dir, slash-separated and sorted.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// Issue #10 point 7: a context that holds kiln's own state (XDG_CACHE_HOME
// inside it), an output dest and a local cache dest must build quickly and
// copy none of them: before, `COPY . /x/` copied kiln's snapshot into
// itself for minutes and failed with "file name too long".
func TestContextHoldingKilnStateIsNotCopied(t *testing.T) {
	tree := map[string]string{
		"Dockerfile": "FROM scratch\nCOPY . /x/\n",
		"a.txt":      "A",
		"sub/b.txt":  "B",
		".gitignore": "c/\n",
	}
	ctxDir := writeContext(t, tree)
	env := []string{"XDG_CACHE_HOME=" + filepath.Join(ctxDir, "c")}
	want := []string{"x/.gitignore", "x/Dockerfile", "x/a.txt", "x/sub/b.txt"}
	// The first build has only its state in the context; the second finds
	// the first one's outputs and cache there too. In the second context
	// kiln's state lies elsewhere, so the output and cache dests alone must
	// be hidden.
	other := writeContext(t, tree)
	for i, tc := range []struct {
		dir, snap string
		env       []string
	}{{ctxDir, "auto", env}, {ctxDir, "copy", env}, {other, "auto", nil}, {other, "copy", nil}} {
		out := filepath.Join(tc.dir, "out")
		_, stderr, code := runBounded(t, 90*time.Second, tc.dir, tc.env, "build", "--progress=plain", "--no-cache", "--snapshotter="+tc.snap,
			"-o", "type=local,dest=out", "-o", "type=oci,dest=img.tar", "--cache-to", "type=local,dest=cache", ".")
		if code != 0 {
			t.Fatalf("build %d: exit %d: %s", i+1, code, lastBytes(stderr, 2000))
		}
		if got := files(t, out); !reflect.DeepEqual(got, want) {
			t.Fatalf("build %d copied %d files (first: %v), want exactly %v", i+1, len(got), got[:min(len(got), 8)], want)
		}
	}
	// Hidden like a .dockerignore'd path: naming it is "not found".
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nCOPY c/kiln /k/\n"), 0o644)
	_, stderr, code := runBounded(t, 60*time.Second, ctxDir, env, "build", "--progress=plain", ".")
	if code == 0 || !strings.Contains(stderr, "not found") {
		t.Fatalf("COPY of kiln's state dir: exit %d, want a not-found error; stderr: %s", code, lastBytes(stderr, 1000))
	}
}

// corruptRegistry serves one repository whose manifest names a layer by a
// malformed digest (as a registry with damaged storage does), and an index
// naming its child by one.
func corruptRegistry(t *testing.T) string {
	good := strings.Repeat("a", 64)
	manifest := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + good + `","size":10},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` + good[:60] + `zzzz","size":10}]}`
	index := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[` +
		`{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:xyz","size":10,"platform":{"architecture":"amd64","os":"linux"}}]}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/":
			w.WriteHeader(http.StatusOK)
		case "/v2/bad/manifests/latest":
			w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
			io.WriteString(w, manifest)
		case "/v2/badindex/manifests/latest":
			w.Header().Set("Content-Type", "application/vnd.oci.image.index.v1+json")
			io.WriteString(w, index)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// A corrupt base manifest names the image, its manifest and the bad
// digest, at the FROM line: before, the error was go-containerregistry's
// bare "found non-hex character in hash".
func TestCorruptBaseManifestNamed(t *testing.T) {
	host := corruptRegistry(t)
	for _, tc := range []struct{ repo, want string }{
		{"bad", `layer 1 digest "sha256:aaaa`},
		{"badindex", `manifest 1 of the index digest "sha256:xyz"`},
	} {
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch AS a\nFROM " + host + "/" + tc.repo + "\nCOPY --from=a / /\n"})
		res := testenv.Run(t, dir, nil, "build", "--progress=plain", "--insecure-registry", host, ".")
		for _, want := range []string{"Dockerfile:2", host + "/" + tc.repo, "corrupt manifest", tc.want} {
			if res.ExitCode == 0 || !strings.Contains(res.Stderr, want) {
				t.Errorf("FROM %s: exit %d, stderr lacks %q:\n%s", tc.repo, res.ExitCode, want, res.Stderr)
			}
		}
	}
}

// Messages a user can act on: a stage cycle names the stages and their
// lines (was "dependency cycle: [1 0 1]"); --parallelism below 1 is refused
// (was accepted and silently treated as 1).
func TestMessages(t *testing.T) {
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM scratch AS a\nCOPY --from=b /x /x\n\nFROM scratch AS b\nCOPY --from=a /y /y\n",
	})
	res := testenv.Run(t, dir, nil, "build", "--progress=plain", ".")
	want := "dependency cycle: stage b (Dockerfile:4) needs stage a (Dockerfile:1) needs stage b (Dockerfile:4)"
	if res.ExitCode == 0 || !strings.Contains(res.Stderr, want) {
		t.Errorf("cycle: exit %d, stderr lacks %q:\n%s", res.ExitCode, want, res.Stderr)
	}
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nLABEL a=b\n"), 0o644)
	for _, p := range []string{"0", "-5"} {
		res := testenv.Run(t, dir, nil, "build", "--progress=plain", "--parallelism", p, ".")
		if want := "--parallelism=" + p + ": must be at least 1"; res.ExitCode == 0 || !strings.Contains(res.Stderr, want) {
			t.Errorf("--parallelism %s: exit %d, stderr lacks %q:\n%s", p, res.ExitCode, want, res.Stderr)
		}
	}
}

// unendedSteps lists the progress ids a plain log announced and never
// ended (DONE, CACHED or ERROR).
func unendedSteps(log string) []string {
	seen, ended := map[string]bool{}, map[string]bool{}
	var order []string
	for _, line := range strings.Split(log, "\n") {
		id, rest, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(id, "#") {
			continue
		}
		if !seen[id] {
			seen[id] = true
			order = append(order, id)
		}
		if rest == "CACHED" || strings.HasPrefix(rest, "DONE ") || strings.HasPrefix(rest, "ERROR ") {
			ended[id] = true
		}
	}
	var open []string
	for _, id := range order {
		if !ended[id] {
			open = append(open, id)
		}
	}
	return open
}

// A failed build ends every step it showed and still writes --report, with
// the failure in it: before, a base image whose ONBUILD trigger was bad
// left "FROM" running forever, and no report was written at all.
func TestFailedBuildEndsStepsAndWritesReport(t *testing.T) {
	host := testenv.Registry(t)
	bad, _ := testenv.BusyboxImage(t, host, "onbuild", testenv.WithOnBuild("FROBNICATE now"))
	for _, tc := range []struct {
		name, dockerfile, stepErr, buildErr string
		files                               map[string]string
	}{
		{name: "bad ONBUILD", dockerfile: "FROM " + bad + "\nLABEL a=b\n", buildErr: "FROBNICATE"},
		{name: "missing COPY source", dockerfile: "FROM scratch\nCOPY a /a\nCOPY missing /m\n",
			files: map[string]string{"a": "a"}, stepErr: "not found", buildErr: "Dockerfile:3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{"Dockerfile": tc.dockerfile}
			maps.Copy(files, tc.files)
			dir := writeContext(t, files)
			rep := filepath.Join(t.TempDir(), "report.json")
			res := testenv.Run(t, dir, nil, "build", "--progress=plain", "--report", rep, ".")
			if res.ExitCode == 0 {
				t.Fatal("build succeeded")
			}
			if open := unendedSteps(res.Stderr); len(open) > 0 {
				t.Errorf("steps %v never ended:\n%s", open, res.Stderr)
			}
			raw, err := os.ReadFile(rep)
			if err != nil {
				t.Fatalf("--report of a failed build: %v", err)
			}
			var r struct {
				Failed bool
				Error  string
				Steps  []struct{ Name, Error string }
			}
			if err := json.Unmarshal(raw, &r); err != nil {
				t.Fatal(err)
			}
			if !r.Failed || !strings.Contains(r.Error, tc.buildErr) {
				t.Errorf("report failed=%v error=%q, want failed and %q", r.Failed, r.Error, tc.buildErr)
			}
			if tc.stepErr != "" {
				if n := len(r.Steps); n != 2 || r.Steps[0].Error != "" || !strings.Contains(r.Steps[1].Error, tc.stepErr) {
					t.Errorf("report steps %+v, want COPY a built and COPY missing failed with %q", r.Steps, tc.stepErr)
				}
			}
		})
	}
}

// A RUN that prints megabytes without a newline has its output shown in
// bounded pieces as it comes: before, kiln held it all as one line (and
// rescanned it on every write) until the process ended.
func TestRunOutputWithoutNewlines(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN head -c 4000000 /dev/zero | tr '\\000' x; exit 3\n",
	})
	_, stderr, code := runBounded(t, 60*time.Second, dir, nil, "build", "--progress=plain", ".")
	if code == 0 || !strings.Contains(stderr, "exit code: 3") {
		t.Fatalf("exit %d, want the RUN's failure:\n%s", code, lastBytes(stderr, 500))
	}
	pieces := 0
	for _, line := range strings.Split(stderr, "\n") {
		if len(line) > 70000 {
			t.Fatalf("a progress line of %d bytes: want pieces of at most 64 KiB", len(line))
		}
		if strings.HasPrefix(line, "#2 xxxx") {
			pieces++
		}
	}
	if pieces < 60 {
		t.Errorf("%d pieces of output shown, want about 61 of 64 KiB for 4 MB", pieces)
	}
}
