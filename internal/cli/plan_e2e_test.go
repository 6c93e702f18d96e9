package cli_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// planDockerfile has a builder stage whose artifact (the major version)
// survives a minor version bump, and a final stage that reads it.
const planDockerfile = `FROM %[1]s AS build
COPY deps.txt /deps.txt
RUN cat /deps.txt > /deps.out
COPY version.txt /v
RUN cut -d. -f1 /v > /major
FROM %[1]s
COPY static.txt /static
COPY --from=build /major /major
RUN cat /major /static > /final && date +%%s%%N >> /final
`

type planReport struct {
	Plan struct {
		Stages []struct {
			Name      string `json:"name"`
			FirstMiss int    `json:"firstMiss"`
			Steps     []struct {
				Name   string `json:"name"`
				Key    string `json:"key"`
				Status string `json:"status"`
				Store  string `json:"store"`
				Reason string `json:"reason"`
			} `json:"steps"`
		} `json:"stages"`
	} `json:"plan"`
	Steps []struct {
		Name   string `json:"name"`
		Stage  string `json:"stage"`
		Cached bool   `json:"cached"`
		Key    string `json:"key"`
	} `json:"steps"`
}

func readPlanReport(t *testing.T, path string) planReport {
	t.Helper()
	var r planReport
	if err := json.Unmarshal([]byte(readFile(t, path)), &r); err != nil {
		t.Fatalf("report: %v", err)
	}
	return r
}

// The plan of a build is what the build then does: on a fresh runner with
// a warm registry cache and one changed file, every step the dry run
// predicts as a hit hits, the predicted miss runs, and the steps after it
// are planned as depending on the rebuilt parent; those whose parent came
// out with the same bytes then hit.
func TestPlanMatchesBuild(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	src := writeContext(t, map[string]string{
		"Dockerfile":  fmt.Sprintf(planDockerfile, base),
		"deps.txt":    "dep-a\n",
		"version.txt": "1.0\n",
		"static.txt":  "static\n",
	})
	cacheRef := reg + "/cache/plan:c"
	// Equal files make equal layer bytes.
	epoch := "SOURCE_DATE_EPOCH=1700000000"
	dir, env := freshRunner(t, src, time.Unix(1700000000, 0))
	kiln(t, dir, append(env, epoch), "build", "--progress=plain", "--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")

	// A fresh runner, a minor version bump.
	dir, env = freshRunner(t, src, time.Unix(1710000000, 0))
	env = append(env, epoch)
	if err := os.WriteFile(filepath.Join(dir, "version.txt"), []byte("1.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	planPath := filepath.Join(t.TempDir(), "plan.json")
	dry := kiln(t, dir, env, "build", "--progress=plain", "--dry-run", "--report", planPath, "--cache-from", "type=registry,ref="+cacheRef, ".")
	for _, want := range []string{
		"COPY deps.txt /deps.txt", "hit (registry:" + cacheRef + ")",
		"COPY version.txt /v", "miss: file version.txt changed",
		"after miss (depends on the rebuilt parent)",
		"after miss (depends on rebuilt stage build)",
		"plan: 3 hit, 1 miss, 3 after a miss",
	} {
		if !strings.Contains(dry.Stdout, want) {
			t.Errorf("the dry run's plan lacks %q:\n%s", want, dry.Stdout)
		}
	}
	if strings.Contains(dry.Stderr, "RUN cut") {
		t.Errorf("the dry run announced a step it does not run:\n%s", dry.Stderr)
	}
	planned := readPlanReport(t, planPath)

	reportPath := filepath.Join(t.TempDir(), "r.json")
	res := kiln(t, dir, env, "build", "--progress=plain", "--report", reportPath, "--cache-from", "type=registry,ref="+cacheRef, ".")
	built := readPlanReport(t, reportPath)
	type ran struct {
		cached bool
		key    string
	}
	did := map[string]ran{}
	for _, s := range built.Steps {
		did[s.Stage+"|"+s.Name] = ran{s.Cached, s.Key}
	}
	want := map[string]string{ // status each step is planned with
		"build|COPY deps.txt /deps.txt":                                   "hit",
		"build|RUN cat /deps.txt > /deps.out":                             "hit",
		"build|COPY version.txt /v":                                       "miss",
		"build|RUN cut -d. -f1 /v > /major":                               "after-miss",
		"stage-1|COPY static.txt /static":                                 "hit",
		"stage-1|COPY --from=build /major /major":                         "after-miss",
		"stage-1|RUN cat /major /static > /final && date +%s%N >> /final": "after-miss",
	}
	n := 0
	for _, s := range planned.Plan.Stages {
		for _, st := range s.Steps {
			n++
			id := s.Name + "|" + st.Name
			if w, ok := want[id]; !ok || st.Status != w {
				t.Errorf("%s: planned %q, want %q", id, st.Status, w)
			}
			r, ok := did[id]
			switch {
			case !ok:
				t.Errorf("%s: planned, but the build did not report it", id)
			case st.Status == "hit" && (!r.cached || r.key != st.Key):
				t.Errorf("%s: planned a hit with key %s; the build cached=%v with key %s", id, st.Key, r.cached, r.key)
			case st.Status == "miss" && (r.cached || r.key != st.Key):
				t.Errorf("%s: planned a miss with key %s; the build cached=%v with key %s", id, st.Key, r.cached, r.key)
			case st.Status == "after-miss" && st.Key != "":
				t.Errorf("%s: after a miss, yet planned with key %s", id, st.Key)
			}
		}
	}
	if n != len(want) || len(built.Steps) != len(want) {
		t.Errorf("planned %d steps, built %d, want %d", n, len(built.Steps), len(want))
	}
	if fm0, fm1 := planned.Plan.Stages[0].FirstMiss, planned.Plan.Stages[1].FirstMiss; fm0 != 2 || fm1 != 1 {
		t.Errorf("first misses at steps %d and %d, want 2 and 1", fm0, fm1)
	}
	// These depend on the changed file and run; COPY --from copies the
	// same /major as before.
	for _, id := range []string{"build|RUN cut -d. -f1 /v > /major", "stage-1|COPY --from=build /major /major"} {
		if did[id].cached {
			t.Errorf("%s: its parent was rebuilt, yet it hit", id)
		}
	}
	// Its parent came out with the same bytes: it hits.
	if id := "stage-1|RUN cat /major /static > /final && date +%s%N >> /final"; !did[id].cached {
		t.Errorf("%s: planned after the miss, its parent rebuilt with the same bytes, but it ran:\n%s", id, res.Stderr)
	}
}

// treeState describes every file under root (path, type, mode, size, mtime,
// content digest; atimes ignored), for comparing before and after.
func treeState(t *testing.T, root string, ignoreMtime ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		mtime := fi.ModTime().UnixNano()
		if slices.Contains(ignoreMtime, rel) {
			mtime = 0
		}
		desc := fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), mtime)
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			desc += " " + hex.EncodeToString(sum[:])
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// registryState lists every repository, tag and manifest digest in reg.
func registryState(t *testing.T, reg string) map[string]string {
	t.Helper()
	get := func(path string, v any) {
		resp, err := http.Get("http://" + reg + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: %s", path, resp.Status, b)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	var cat struct{ Repositories []string }
	get("/v2/_catalog", &cat)
	out := map[string]string{}
	for _, repo := range cat.Repositories {
		var tags struct{ Tags []string }
		get("/v2/"+repo+"/tags/list", &tags)
		for _, tag := range tags.Tags {
			req, _ := http.NewRequest(http.MethodHead, "http://"+reg+"/v2/"+repo+"/manifests/"+tag, nil)
			req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			out[repo+":"+tag] = resp.Header.Get("Docker-Content-Digest")
		}
	}
	return out
}

func diffStates(a, b map[string]string) []string {
	var d []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			d = append(d, "removed "+k)
		} else if v != w {
			d = append(d, fmt.Sprintf("changed %s: %s -> %s", k, v, w))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "added "+k)
		}
	}
	slices.Sort(d)
	return d
}

// --dry-run changes nothing on disk or in any registry, even asked to
// push and to export its cache, and says truthfully what would hit.
func TestDryRunChangesNothing(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	dir := writeContext(t, map[string]string{
		"Dockerfile":  fmt.Sprintf(planDockerfile, base),
		"deps.txt":    "dep-a\n",
		"version.txt": "1.0\n",
		"static.txt":  "static\n",
	})
	cacheRef := reg + "/cache/dry:c"
	kiln(t, dir, nil, "build", "--progress=plain", "--push", "-t", reg+"/dry:1", "--cache-to", "type=registry,ref="+cacheRef+",mode=max", ".")
	if err := os.WriteFile(filepath.Join(dir, "version.txt"), []byte("2.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	home := testenv.Home(t)
	localCache := filepath.Join(t.TempDir(), "local-cache")
	// The per-build run/ directory comes and goes: its mtime may move.
	runDir := filepath.Join(".cache", "kiln", "run")
	homeBefore, ctxBefore, regBefore := treeState(t, home, runDir), treeState(t, dir), registryState(t, reg)

	res := kiln(t, dir, nil, "build", "--progress=plain", "--dry-run", "--push", "-t", reg+"/dry:2", "-t", reg+"/other:1",
		"--cache-from", "type=registry,ref="+cacheRef,
		"--cache-to", "type=registry,ref="+cacheRef+",mode=max", "--cache-to", "type=registry,ref="+reg+"/cache/new:c",
		"--cache-to", "type=local,dest="+localCache, ".")
	for _, want := range []string{"COPY deps.txt /deps.txt", "hit (local:", "miss: file version.txt changed", "after miss (depends on rebuilt stage build)"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("the dry run's plan lacks %q:\n%s", want, res.Stdout)
		}
	}
	if d := diffStates(homeBefore, treeState(t, home, runDir)); len(d) > 0 {
		t.Errorf("--dry-run changed kiln's directories:\n%s", strings.Join(d, "\n"))
	}
	if d := diffStates(ctxBefore, treeState(t, dir)); len(d) > 0 {
		t.Errorf("--dry-run changed the context:\n%s", strings.Join(d, "\n"))
	}
	if d := diffStates(regBefore, registryState(t, reg)); len(d) > 0 {
		t.Errorf("--dry-run changed the registry:\n%s", strings.Join(d, "\n"))
	}
	if _, err := os.Stat(localCache); err == nil {
		t.Errorf("--dry-run wrote the type=local --cache-to %s", localCache)
	}
	// On a machine kiln has never run on, it creates no kiln directory.
	newHome := t.TempDir()
	kilnCPU(t, newHome, dir, "build", "--progress=plain", "--dry-run", "--cache-from", "type=registry,ref="+cacheRef, ".")
	if des, err := os.ReadDir(newHome); err != nil || len(des) > 0 {
		t.Errorf("--dry-run on a new machine left %v in its home (%v)", des, err)
	}
	// And it ran nothing: a real build afterwards still has the miss to run.
	report := filepath.Join(t.TempDir(), "r.json")
	kiln(t, dir, nil, "build", "--progress=plain", "--report", report, ".")
	for _, s := range readReport(t, report).Steps {
		if s.Name == "COPY version.txt /v" && s.Cached {
			t.Errorf("after a dry run, the changed step hit: the dry run built it")
		}
	}
}
