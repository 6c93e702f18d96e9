package plan

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Status is what the plan predicts for a step.
type Status string

const (
	// Hit: a store has the step's result; it costs a lookup, no download.
	Hit Status = "hit"
	// Miss: no store has the step's key, so it runs.
	Miss Status = "miss"
	// AfterMiss: the step builds on a result this build makes anew (its
	// stage's first miss, or a stage it reads from that misses), so its key
	// is unknowable before that result exists. It may still hit, when the
	// rebuilt parent's bytes come out the same as before.
	AfterMiss Status = "after-miss"
)

// Plan is every needed stage of a build, in the order they are built.
type Plan struct {
	Stages []Stage `json:"stages"`
}

// Stage is one stage's steps. FirstMiss is the index in Steps of the first
// step that is not a hit (-1 when every step hits): what it needs is the
// stage's layers up to it, the first thing worth fetching.
type Stage struct {
	Name      string `json:"name"`
	Steps     []Step `json:"steps"`
	FirstMiss int    `json:"firstMiss"`
}

// Step is one layer step as the plan sees it.
type Step struct {
	// ID names the step across builds (the cache's step id).
	ID string `json:"id,omitempty"`
	// Name is the instruction as written, e.g. "RUN go build".
	Name string `json:"name"`
	Line int    `json:"line"`
	// Key is the step's cache key, "" when it is unknowable (AfterMiss).
	Key    string `json:"key,omitempty"`
	Status Status `json:"status"`
	// Store is the store a hit is served from.
	Store string `json:"store,omitempty"`
	// Reason says why a step misses (the input that changed, or that the
	// cache is disabled) or what an AfterMiss step waits on.
	Reason string `json:"reason,omitempty"`
}

// NewStage returns an empty stage whose first miss is still to come.
func NewStage(name string) Stage { return Stage{Name: name, FirstMiss: -1} }

// Add appends a step, keeping FirstMiss.
func (s *Stage) Add(st Step) {
	if st.Status != Hit && s.FirstMiss < 0 {
		s.FirstMiss = len(s.Steps)
	}
	s.Steps = append(s.Steps, st)
}

// Counts returns how many steps the plan predicts in each status.
func (p *Plan) Counts() map[Status]int {
	n := map[Status]int{}
	for _, s := range p.Stages {
		for _, st := range s.Steps {
			n[st.Status]++
		}
	}
	return n
}

// Text writes the plan for people: one line per step, e.g.
//
//	[app 2/3] RUN go build   miss: file main.go changed
func (p *Plan) Text(w io.Writer) error {
	width := 0
	lines := [][2]string{}
	for _, s := range p.Stages {
		for i, st := range s.Steps {
			prefix := fmt.Sprintf("[%s %d/%d]", s.Name, i+1, len(s.Steps))
			if len(p.Stages) == 1 {
				prefix = fmt.Sprintf("[%d/%d]", i+1, len(s.Steps))
			}
			left := prefix + " " + oneLine(st.Name)
			width = max(width, len(left))
			lines = append(lines, [2]string{left, verdict(st)})
		}
	}
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%-*s   %s\n", width, l[0], l[1])
	}
	n := p.Counts()
	fmt.Fprintf(&b, "plan: %d hit, %d miss, %d after a miss\n", n[Hit], n[Miss], n[AfterMiss])
	_, err := io.WriteString(w, b.String())
	return err
}

func verdict(st Step) string {
	switch st.Status {
	case Hit:
		return fmt.Sprintf("hit (%s)", st.Store)
	case Miss:
		if st.Reason == "" {
			return "miss: not cached"
		}
		return "miss: " + st.Reason
	default:
		if st.Reason == "" {
			return "after miss (depends on the rebuilt parent)"
		}
		return "after miss (" + st.Reason + ")"
	}
}

// oneLine keeps a multi-line instruction (a heredoc) to its first line.
func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// JSON writes the plan as indented JSON, as the CLI's reports are written.
func (p *Plan) JSON(w io.Writer) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
