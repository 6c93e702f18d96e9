package cli_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testenv"
)

// rebuildReason builds dir with a report and returns the summary's
// "rebuilt because" line for the COPY and the report's reason for it.
func rebuildReason(t *testing.T, dir string) (plain, report string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "r.json")
	res := kiln(t, dir, nil, "build", "--progress=plain", "--report", path, ".")
	for _, l := range strings.Split(res.Stderr, "\n") {
		if strings.Contains(l, "COPY . /app: rebuilt because ") {
			plain = l
		}
	}
	for _, st := range readReport(t, path).Steps {
		if st.Name == "COPY . /app" {
			report = st.Reason
		}
	}
	return plain, report
}

func writeN(t *testing.T, dir string, names []string, content string) {
	t.Helper()
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// A miss in a 20,000-file context names the changed files, in the plain
// summary and in --report: the first ten and a count of the rest. Before,
// past 2000 files the record kept one digest and the miss said only
// "files changed".
func TestMissNamesFilesInLargeContext(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nCOPY . /app\n"})
	var names []string
	for d := range 100 {
		if err := os.Mkdir(filepath.Join(dir, fmt.Sprintf("d%02d", d)), 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range 200 {
			names = append(names, fmt.Sprintf("d%02d/f%03d.txt", d, f))
		}
	}
	writeN(t, dir, names, "x\n")
	kiln(t, dir, nil, "build", "--progress=plain", ".")

	writeN(t, dir, []string{"d42/f137.txt"}, "changed\n")
	plain, report := rebuildReason(t, dir)
	if want := "file d42/f137.txt changed"; !strings.Contains(plain, want) || report != want {
		t.Errorf("one file of 20,000 changed: summary %q, report %q; want %q", plain, report, want)
	}

	writeN(t, dir, names[:15], "changed again\n")
	plain, report = rebuildReason(t, dir)
	if strings.Count(report, "changed") != 10 || !strings.HasSuffix(report, "; and 5 more") ||
		!strings.Contains(report, "file d00/f000.txt changed") || !strings.Contains(plain, report) {
		t.Errorf("15 files of 20,000 changed: summary %q, report %q; want ten names and \"and 5 more\"", plain, report)
	}
}

// Two files of 30 changed: both are named.
func TestMissNamesTwoFiles(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	files := map[string]string{"Dockerfile": "FROM " + base + "\nCOPY . /app\n"}
	for i := range 29 {
		files[fmt.Sprintf("f%02d", i)] = "x"
	}
	dir := writeContext(t, files)
	kiln(t, dir, nil, "build", "--progress=plain", ".")
	writeN(t, dir, []string{"f03", "f17"}, "changed")
	plain, report := rebuildReason(t, dir)
	if want := "file f03 changed; file f17 changed"; !strings.Contains(plain, want) || report != want {
		t.Errorf("2 of 30 changed: summary %q, report %q; want %q", plain, report, want)
	}
}

// An ARG inherited through FROM a stage is explained as an ARG (before:
// "ENV V changed"), and a step whose own inputs are unchanged says the
// step above it produced other bytes.
func TestMissNamesArgAndParent(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + " AS a\nARG V=1\nFROM a\nRUN echo $V > /v\nCOPY f /f\nRUN cat /f > /g\n",
		"f":          "one",
	})
	kiln(t, dir, nil, "build", "--progress=plain", "--build-arg", "V=1", ".")
	reasons := func(args ...string) map[string]string {
		path := filepath.Join(t.TempDir(), "r.json")
		kiln(t, dir, nil, append([]string{"build", "--progress=plain", "--report", path}, append(args, ".")...)...)
		out := map[string]string{}
		for _, st := range readReport(t, path).Steps {
			out[st.Name] = st.Reason
		}
		return out
	}
	if got := reasons("--build-arg", "V=2")["RUN echo $V > /v"]; got != "ARG V changed" {
		t.Errorf("V changed: RUN echo $V rebuilt because %q, want \"ARG V changed\"", got)
	}
	writeN(t, dir, []string{"f"}, "two")
	got := reasons("--build-arg", "V=2")
	if got["COPY f /f"] != "file f changed" || got["RUN cat /f > /g"] != "the step above was rebuilt with different bytes" {
		t.Errorf("f changed: reasons %q", got)
	}
}
