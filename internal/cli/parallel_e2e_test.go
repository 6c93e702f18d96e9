package cli_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-build/kiln/internal/testenv"
)

// parallelDockerfile has three independent stages, each running body
// (with %[1]s its name) against one shared cache mount, and a final stage
// that copies the shared log out.
func parallelDockerfile(base, id, body string) string {
	var df strings.Builder
	for _, s := range []string{"a", "b", "c"} {
		fmt.Fprintf(&df, "FROM %s AS %s\nRUN --mount=type=cache,id=%s,target=/rv,sharing=shared sh -c '%s'\n",
			base, s, id, fmt.Sprintf(body, s))
	}
	fmt.Fprintf(&df, "FROM %s\nCOPY --from=a /done /a\nCOPY --from=b /done /b\nCOPY --from=c /done /c\n", base)
	fmt.Fprintf(&df, "RUN --mount=type=cache,id=%s,target=/rv,sharing=shared cp /rv/log /log\n", id)
	return df.String()
}

// Every ready stage runs at once by default, as in BuildKit: three stages
// that each wait (up to 30 s) until all three are running complete on a
// 2-core machine; before, --parallelism defaulted to the CPU count and the
// third never started while the first two waited for it (exit 7). With
// --parallelism 1 the stages run one at a time: each one's start and end
// are adjacent in the shared log.
func TestEveryReadyStageRuns(t *testing.T) {
	testenv.Need(t, "runc")
	reg := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, reg, "busybox")

	rendezvous := `echo start %[1]s >> /rv/log; touch /rv/m-%[1]s; i=0; ` +
		`while [ $(ls /rv | grep -c ^m-) -lt 3 ]; do i=$((i+1)); [ $i -gt 300 ] && exit 7; sleep 0.1; done; ` +
		`echo end %[1]s >> /rv/log; echo %[1]s > /done`
	dir := writeContext(t, map[string]string{"Dockerfile": parallelDockerfile(base, "rv", rendezvous)})
	out := filepath.Join(t.TempDir(), "out")
	_, stderr, code := runBounded(t, 90*time.Second, dir, nil, "build", "--progress=plain", "-o", "type=local,dest="+out, ".")
	if code != 0 {
		t.Fatalf("three stages meeting at a rendezvous: exit %d (a stage never started?)\n%s", code, stderr)
	}
	if log := readFile(t, filepath.Join(out, "log")); strings.Count(log, "start") != 3 || strings.Index(log, "end") < strings.LastIndex(log, "start") {
		t.Errorf("stages did not all start before any ended:\n%s", log)
	}

	serial := `echo start %[1]s >> /rv/log; sleep 0.3; echo end %[1]s >> /rv/log; echo %[1]s > /done`
	dir = writeContext(t, map[string]string{"Dockerfile": parallelDockerfile(base, "serial", serial)})
	out = filepath.Join(t.TempDir(), "out")
	kiln(t, dir, nil, "build", "--progress=plain", "--parallelism", "1", "-o", "type=local,dest="+out, ".")
	lines := strings.Fields(strings.ReplaceAll(readFile(t, filepath.Join(out, "log")), "\n", " "))
	if len(lines) != 12 {
		t.Fatalf("--parallelism 1 log: %q", lines)
	}
	for i := 0; i < len(lines); i += 4 {
		if lines[i] != "start" || lines[i+2] != "end" || lines[i+1] != lines[i+3] {
			t.Errorf("--parallelism 1: stages overlapped: %q", lines)
			break
		}
	}
}
