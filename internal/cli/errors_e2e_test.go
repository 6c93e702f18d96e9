package cli_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-build/kiln/internal/testenv"
)

// Every kind of bad input exits non-zero with one error that names the
// Dockerfile line where there is one — and pushes nothing.
func TestBadInput(t *testing.T) {
	host := testenv.Registry(t)
	base, _ := testenv.BusyboxImage(t, host, "busybox")
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		dockerfile string
		files      map[string]string
		args       []string
		want       []string // substrings of stderr
	}{
		{
			name:       "malformed instruction",
			dockerfile: "FROM scratch\nCOPY onlyone\n",
			want:       []string{"Dockerfile:2:", "COPY requires at least two arguments"},
		},
		{
			name:       "unknown instruction",
			dockerfile: "FROM scratch\n\nFROBNICATE now\n",
			want:       []string{"Dockerfile:3:", "unknown instruction: FROBNICATE"},
		},
		{
			name:       "no FROM",
			dockerfile: "ARG X=1\n",
			want:       []string{"Dockerfile:", "FROM"},
		},
		{
			name:       "missing COPY source",
			dockerfile: "FROM scratch\nCOPY present.txt /p\nCOPY missing.txt /m\n",
			files:      map[string]string{"present.txt": "p"},
			want:       []string{"Dockerfile:3:", "missing.txt", "not found"},
		},
		{
			name:       "source outside the context",
			dockerfile: "FROM scratch\nCOPY ../secret /s\n",
			want:       []string{"Dockerfile:2:", "outside"},
		},
		{
			name:       "symlink out of the context",
			dockerfile: "FROM scratch\nCOPY escape /s\n",
			files:      map[string]string{"escape": "symlink:../../../../../../../../" + strings.TrimPrefix(outside, "/") + "/secret"},
			want:       []string{"Dockerfile:2:"},
		},
		{
			name:       "unknown stage in --from",
			dockerfile: "FROM scratch AS build\nCOPY x /x\nFROM scratch\nCOPY --from=" + host + "/buidler /x /x\n",
			files:      map[string]string{"x": "x"},
			want:       []string{"Dockerfile:4:", "no stage of that name (stages: build)", "not found"},
		},
		{
			name:       "unreachable registry",
			dockerfile: "FROM scratch\nLABEL a=b\nFROM 127.0.0.1:1/nothing:here\nCOPY x /x\n",
			files:      map[string]string{"x": "x"},
			want:       []string{"Dockerfile:3:", "127.0.0.1:1", "unreachable"},
		},
		{
			name:       "failing RUN",
			dockerfile: "FROM " + base + "\nCOPY x /x\nRUN echo hi && exit 7\n",
			files:      map[string]string{"x": "x"},
			want:       []string{"Dockerfile:3:", "exit code: 7", "hi"},
		},
		{
			name:       "required ssh agent not forwarded",
			dockerfile: "FROM " + base + "\nRUN --mount=type=ssh,id=deploy,required=true true\n",
			want:       []string{"Dockerfile:2:", `no SSH key "deploy" forwarded`, "--ssh deploy"},
		},
		{
			name:       "--ssh key file that is not a key",
			dockerfile: "FROM scratch\nLABEL a=b\n",
			files:      map[string]string{"notakey": "hello"},
			args:       []string{"--ssh", "deploy=notakey"},
			want:       []string{"--ssh deploy", "notakey"},
		},
		{
			name:       "RUN --security=insecure without --allow",
			dockerfile: "FROM " + base + "\nRUN --security=insecure true\n",
			want:       []string{"Dockerfile:2:", "security.insecure is not allowed", "--allow security.insecure"},
		},
		{
			name:       "unknown --allow entitlement",
			dockerfile: "FROM scratch\nLABEL a=b\n",
			args:       []string{"--allow", "device"},
			want:       []string{"--allow=device", "invalid entitlement"},
		},
		{
			name:       "missing required secret",
			dockerfile: "FROM " + base + "\nRUN --mount=type=secret,id=tok,required=true true\n",
			want:       []string{"Dockerfile:2:", `secret "tok" is required`},
		},
		{
			name:       "bind mount source outside the context",
			dockerfile: "FROM " + base + "\nRUN --mount=type=bind,source=../secret,target=/s cat /s\n",
			want:       []string{"Dockerfile:2:", "not found"},
		},
		{
			name:       "unknown target",
			dockerfile: "FROM scratch AS a\nLABEL a=b\n",
			args:       []string{"--target", "nope"},
			want:       []string{`target stage "nope" could not be found`},
		},
		{
			name:       "bad chmod",
			dockerfile: "FROM scratch\nCOPY --chmod=999 x /x\n",
			files:      map[string]string{"x": "x"},
			want:       []string{"Dockerfile:2:", "invalid chmod"},
		},
		{
			name:       "unknown user in --chown",
			dockerfile: "FROM " + base + "\nCOPY --chown=nosuchuser x /x\n",
			files:      map[string]string{"x": "x"},
			want:       []string{"Dockerfile:2:", "nosuchuser"},
		},
		{
			name:       "not a linux platform",
			dockerfile: "FROM scratch\n",
			args:       []string{"--platform", "windows/amd64"},
			want:       []string{"windows/amd64", "only linux platforms"},
		},
		{
			name:       "platform given twice",
			dockerfile: "FROM scratch\n",
			args:       []string{"--platform", "linux/arm64,linux/arm64/v8"},
			want:       []string{"linux/arm64 is given twice"},
		},
		{
			name:       "two platforms into docker",
			dockerfile: "FROM scratch\n",
			args:       []string{"--platform", "linux/amd64,linux/arm64", "-o", "type=docker,dest=img.tar"},
			want:       []string{"type=docker", "one platform"},
		},
		{
			name:       "bad output",
			dockerfile: "FROM scratch\n",
			args:       []string{"-o", "type=floppy"},
			want:       []string{"type=floppy"},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{"Dockerfile": tt.dockerfile}
			for k, v := range tt.files {
				files[k] = v
			}
			parent := t.TempDir()
			dir := filepath.Join(parent, "ctx")
			testenv.WriteFiles(t, dir, files)
			if err := os.WriteFile(filepath.Join(parent, "secret"), []byte("outside"), 0o644); err != nil {
				t.Fatal(err)
			}
			tag := host + "/failed:" + strings.Repeat("x", 1) + string(rune('a'+i))
			args := append([]string{"build", "--progress=plain", "--push", "-t", tag}, tt.args...)
			res := testenv.Run(t, dir, nil, append(args, ".")...)
			if res.ExitCode == 0 {
				t.Fatalf("exit 0 for bad input; stderr:\n%s", res.Stderr)
			}
			if n := strings.Count(res.Stderr, "ERROR:"); n != 1 {
				t.Errorf("want exactly one ERROR line, got %d:\n%s", n, res.Stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(res.Stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, res.Stderr)
				}
			}
			if strings.Contains(res.Stderr, "outside\n") {
				t.Errorf("a file from outside the context reached the output")
			}
			// A failed build pushes nothing.
			resp, err := http.Get("http://" + host + "/v2/failed/tags/list")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("registry has repository failed/ after a failed build (status %d)", resp.StatusCode)
			}
		})
	}
}
