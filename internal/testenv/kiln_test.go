package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeKiln is a stand-in for cmd/kiln: it echoes what Run gave it, so the
// plumbing of Run is tested without the real CLI.
const fakeKiln = `package main

import (
	"fmt"
	"os"
	"strconv"
)

func main() {
	wd, _ := os.Getwd()
	fmt.Printf("wd=%s\n", wd)
	for _, k := range []string{"HOME", "XDG_CACHE_HOME", "DOCKER_CONFIG", "EXTRA"} {
		fmt.Printf("%s=%s\n", k, os.Getenv(k))
	}
	fmt.Printf("args=%q\n", os.Args[1:])
	fmt.Fprintln(os.Stderr, "to stderr")
	if len(os.Args) > 2 && os.Args[1] == "exit" {
		code, _ := strconv.Atoi(os.Args[2])
		os.Exit(code)
	}
}
`

func buildFake(t *testing.T) string {
	t.Helper()
	goBin := Need(t, "go")
	mod := t.TempDir()
	WriteFiles(t, mod, map[string]string{
		"go.mod":  "module example.com/fakekiln\n\ngo 1.26\n",
		"main.go": fakeKiln,
	})
	out := filepath.Join(t.TempDir(), "kiln")
	if err := goBuild(goBin, mod, "example.com/fakekiln", out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRun(t *testing.T) {
	bin := buildFake(t)
	work := t.TempDir()
	cache := t.TempDir()
	tests := []struct {
		name     string
		env      []string
		args     []string
		wantCode int
		want     []string // lines expected in stdout
	}{
		{
			name: "isolated home by default",
			args: []string{"build", "."},
			want: []string{"wd=" + work, "HOME=" + Home(t), "XDG_CACHE_HOME=" + filepath.Join(Home(t), ".cache"),
				"DOCKER_CONFIG=" + filepath.Join(Home(t), ".docker"), `args=["build" "."]`},
		},
		{
			name: "env overrides and additions",
			env:  []string{"XDG_CACHE_HOME=" + cache, "EXTRA=1"},
			want: []string{"HOME=" + Home(t), "XDG_CACHE_HOME=" + cache, "EXTRA=1"},
		},
		{
			name:     "non-zero exit is reported, not fatal",
			args:     []string{"exit", "3"},
			wantCode: 3,
		},
	}
	for _, tt := range tests {
		res := run(t, bin, work, tt.env, tt.args...)
		if res.ExitCode != tt.wantCode {
			t.Errorf("%s: exit %d, want %d", tt.name, res.ExitCode, tt.wantCode)
		}
		if res.Stderr != "to stderr\n" {
			t.Errorf("%s: stderr %q", tt.name, res.Stderr)
		}
		lines := strings.Split(res.Stdout, "\n")
		for _, w := range tt.want {
			found := false
			for _, l := range lines {
				found = found || l == w
			}
			if !found {
				t.Errorf("%s: stdout lacks %q:\n%s", tt.name, w, res.Stdout)
			}
		}
	}
}

func TestHomeIsPerTest(t *testing.T) {
	var first string
	t.Run("a", func(t *testing.T) {
		first = Home(t)
		if again := Home(t); again != first {
			t.Errorf("Home changed within a test: %s then %s", first, again)
		}
	})
	t.Run("b", func(t *testing.T) {
		if h := Home(t); h == first {
			t.Errorf("two tests share home %s", h)
		}
	})
}

func TestGoBuildReportsCompilerOutput(t *testing.T) {
	goBin := Need(t, "go")
	mod := t.TempDir()
	WriteFiles(t, mod, map[string]string{
		"go.mod":  "module example.com/broken\n\ngo 1.26\n",
		"main.go": "package main\n\nfunc main() { undefinedThing() }\n",
	})
	err := goBuild(goBin, mod, "example.com/broken", filepath.Join(t.TempDir(), "x"))
	if err == nil || !strings.Contains(err.Error(), "undefined: undefinedThing") {
		t.Fatalf("goBuild error = %v, want the compiler's message", err)
	}
}

func TestModuleRoot(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "module github.com/kiln-build/kiln\n") {
		t.Errorf("%s/go.mod is not kiln's", root)
	}
}

// TestKiln builds the real CLI. It waits for cmd/kiln to exist rather than
// failing: the CLI is written separately from this package.
func TestKiln(t *testing.T) {
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "kiln")); err != nil {
		t.Skipf("cmd/kiln not written yet: %v", err)
	}
	bin := Kiln(t)
	if again := Kiln(t); again != bin {
		t.Errorf("Kiln built twice: %s, %s", bin, again)
	}
	fi, err := os.Stat(bin)
	if err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("kiln binary %s not executable: %v", bin, err)
	}
	res := Run(t, t.TempDir(), nil, "--help")
	if res.ExitCode != 0 {
		t.Errorf("kiln --help exit %d\n%s", res.ExitCode, res.Stderr)
	}
}
