package solver

import (
	"encoding/json"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestImportRules guards the import graph DESIGN.md draws: imports flow
// cli → solver → leaves; leaves never import solver or cli; the frontend
// and the stage graph do no disk, network or process I/O; test support
// code never ships in the binary.
func TestImportRules(t *testing.T) {
	const mod = "github.com/kiln-build/kiln/"
	out, err := exec.Command("go", "list", "-json", mod+"...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	type pkg struct {
		ImportPath string
		Imports    []string
		Deps       []string
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	internal := func(name string) string { return mod + "internal/" + name }
	pure := []string{internal("dockerfile"), internal("graph"), internal("plan"), internal("progress")}
	ioPkgs := []string{"os", "os/exec", "net", "net/http", "io/ioutil", "syscall"}
	upper := []string{internal("solver"), internal("cli")}
	for _, p := range pkgs {
		if slices.Contains(pure, p.ImportPath) {
			for _, imp := range p.Imports {
				if slices.Contains(ioPkgs, imp) {
					t.Errorf("%s imports %s: it must do no disk, network or process I/O", p.ImportPath, imp)
				}
			}
		}
		isUpper := slices.Contains(upper, p.ImportPath) || strings.HasPrefix(p.ImportPath, mod+"cmd/")
		for _, imp := range p.Imports {
			if !isUpper && slices.Contains(upper, imp) {
				t.Errorf("%s imports %s: leaves must not import the solver or the CLI", p.ImportPath, imp)
			}
			if imp == internal("cli") && p.ImportPath != mod+"cmd/kiln" {
				t.Errorf("%s imports the CLI package", p.ImportPath)
			}
		}
		if p.ImportPath != internal("testenv") && slices.Contains(p.Deps, internal("testenv")) {
			t.Errorf("%s links internal/testenv, which is test support only", p.ImportPath)
		}
		if p.ImportPath == internal("snapshot") && slices.Contains(p.Deps, internal("executor")) ||
			p.ImportPath == internal("executor") && slices.Contains(p.Deps, internal("snapshot")) {
			t.Errorf("%s: snapshot and executor must not depend on each other", p.ImportPath)
		}
	}
}
