package plan

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func sample() *Plan {
	s := NewStage("app")
	s.Add(Step{Name: "COPY go.mod .", Line: 2, Key: "sha256:a", Status: Hit, Store: "registry 127.0.0.1:5000/app:cache"})
	s.Add(Step{Name: "COPY . .", Line: 3, Key: "sha256:b", Status: Miss, Reason: "file main.go changed"})
	s.Add(Step{Name: "RUN go build", Line: 4, Status: AfterMiss})
	t := NewStage("final")
	t.Add(Step{Name: "COPY --from=app /app /app", Line: 7, Status: AfterMiss, Reason: "depends on rebuilt stage app"})
	return &Plan{Stages: []Stage{s, t}}
}

func TestFirstMiss(t *testing.T) {
	p := sample()
	if p.Stages[0].FirstMiss != 1 || p.Stages[1].FirstMiss != 0 {
		t.Errorf("first misses %d, %d; want 1, 0", p.Stages[0].FirstMiss, p.Stages[1].FirstMiss)
	}
	all := NewStage("hits")
	all.Add(Step{Status: Hit})
	if all.FirstMiss != -1 {
		t.Errorf("a stage of hits has first miss %d", all.FirstMiss)
	}
}

func TestText(t *testing.T) {
	var b bytes.Buffer
	if err := sample().Text(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"[app 1/3] COPY go.mod .",
		"hit (registry 127.0.0.1:5000/app:cache)",
		"[app 2/3] COPY . .",
		"miss: file main.go changed",
		"after miss (depends on the rebuilt parent)",
		"after miss (depends on rebuilt stage app)",
		"plan: 1 hit, 1 miss, 2 after a miss",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan text lacks %q:\n%s", want, out)
		}
	}
	// Verdicts line up in one column.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	col := strings.Index(lines[0], "hit (")
	if strings.Index(lines[1], "miss:") != col {
		t.Errorf("verdicts not aligned:\n%s", out)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	var b bytes.Buffer
	if err := sample().JSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Plan
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Stages[0].Steps[1].Reason != "file main.go changed" || back.Stages[0].Steps[2].Status != AfterMiss || back.Stages[1].FirstMiss != 0 {
		t.Errorf("round trip lost data: %+v", back)
	}
}
