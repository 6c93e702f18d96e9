package cachekey

import (
	"fmt"
	"strings"
	"testing"
)

func manyFiles(n int) []File {
	files := make([]File, n)
	for i := range files {
		files[i] = File{Path: fmt.Sprintf("d%02d/f%05d", i%50, i), Digest: fmt.Sprintf("sha256:%064d", i)}
	}
	return files
}

func inputsOf(files []File) Inputs {
	in := Inputs{"parent": "p", "instruction": "COPY . /app"}
	AddFiles(in, files)
	return in
}

// Past maxNamedFiles the record holds one digest and an index of 8 bytes
// a file, and a miss still names the files that changed.
func TestExplainManyFiles(t *testing.T) {
	files := manyFiles(20_000)
	before := inputsOf(files)
	if n := len(before[filesIndex]); n > 20_000*8*4/3+16 {
		t.Errorf("index of 20,000 files is %d bytes", n)
	}
	if _, named := before["file:"+files[0].Path]; named {
		t.Error("20,000 files named one by one in the record")
	}
	now := append([]File(nil), files...)
	now[12345].Digest = "sha256:changed"
	if got, want := Explain(before, inputsOf(now), now), "file "+now[12345].Path+" changed"; got != want {
		t.Errorf("one file changed: %q, want %q", got, want)
	}
	for i := 100; i < 115; i++ {
		now[i].Digest = "sha256:changed"
	}
	got := Explain(before, inputsOf(now), now)
	if strings.Count(got, " changed") != 10 || !strings.HasSuffix(got, "; and 6 more") {
		t.Errorf("16 files changed: %q", got)
	}
	added := append(append([]File(nil), files[1:]...), File{Path: "new.go", Digest: "x"})
	if got, want := Explain(before, inputsOf(added), added), "1 file removed; file new.go added"; got != want {
		t.Errorf("added and removed: %q, want %q", got, want)
	}
	// Unchanged files explain nothing, and the index is not in the key.
	if got := Explain(before, inputsOf(files), files); got != "" {
		t.Errorf("nothing changed: %q", got)
	}
	in := inputsOf(files)
	k := Key("copy", in)
	delete(in, filesIndex)
	if Key("copy", in) != k {
		t.Error("the index changes the key")
	}
	// A record from before indexes existed says what it can.
	if got := Explain(in, inputsOf(now), now); got != "files changed" {
		t.Errorf("record without an index: %q", got)
	}
}

// A context growing or shrinking across maxNamedFiles still names files:
// an earlier record's names are compared with today's list, an earlier
// index with today's hashes.
func TestExplainAcrossNamedLimit(t *testing.T) {
	files := manyFiles(maxNamedFiles)
	grown := append(append([]File(nil), files...), File{Path: "zz/new", Digest: "n"})
	if got, want := Explain(inputsOf(files), inputsOf(grown), grown), "file zz/new added"; got != want {
		t.Errorf("grown past the limit: %q, want %q", got, want)
	}
	if got, want := Explain(inputsOf(grown), inputsOf(files), files), "1 file removed"; got != want {
		t.Errorf("shrunk below the limit: %q, want %q", got, want)
	}
}
