package cachekey

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Version tags every key. Change it when the normalization changes, or
// when a step's result for the same inputs does, so old cache entries are
// never misread or reused. v3: layers keep file capabilities (a RUN's
// setcap, an ADDed archive's), COPY keeps hard links among the files it
// copies, and ADD of an archive with a "./" entry leaves the
// destination's owner and mode alone; a v2 entry would bring back the old
// results.
const Version = "kiln.cachekey.v3"

// Inputs are a step's named inputs. Names are prefixed by kind so a miss
// can be explained in words: "parent", "base", "instruction", "workdir",
// "user", "network", "dest", "from", "file:<path>", "arg:<name>",
// "env:<name>", "mount:<n>", "heredoc:<name>", "option:<name>".
// Values are texts or digests; never secret values. Names starting with
// "note:" are recorded to explain a later miss and never hashed into the
// key: each is a function of hashed inputs (see AddFiles).
type Inputs map[string]string

// notePrefix marks inputs Key skips.
const notePrefix = "note:"

// inheritedArgs notes which "env:" inputs are ARGs inherited through FROM
// a stage: their key name stays "env:" (shipped keys never change), but a
// miss they cause is explained as an ARG.
const inheritedArgs = notePrefix + "args"

// NoteInheritedArgs records names as ARGs inherited from a parent stage.
func NoteInheritedArgs(in Inputs, names []string) {
	if len(names) > 0 {
		in[inheritedArgs] = strings.Join(names, "\n")
	}
}

// Base is the key a stage starts from: a registry image by its manifest
// digest, or scratch. Options that change every layer's bytes (the
// compression, SOURCE_DATE_EPOCH clamping) are part of it, so a cache entry
// is never reused where its bytes would differ.
func Base(platform, manifest string, options map[string]string) digest.Digest {
	in := Inputs{"platform": platform, "base": manifest}
	if manifest == "" {
		in["base"] = "scratch"
	}
	for k, v := range options {
		in["option:"+k] = v
	}
	return Key("base", in)
}

// Key is the key of one step of kind op ("copy", "add", "workdir", "run")
// with the given inputs. The parent's key is the "parent" input.
func Key(op string, in Inputs) digest.Digest {
	names := make([]string, 0, len(in))
	for k := range in {
		if !strings.HasPrefix(k, notePrefix) {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	pairs := make([][2]string, 0, len(names))
	for _, k := range names {
		pairs = append(pairs, [2]string{k, in[k]})
	}
	b, err := json.Marshal(struct {
		Version string      `json:"v"`
		Op      string      `json:"op"`
		Inputs  [][2]string `json:"in"`
	}{Version, op, pairs})
	if err != nil {
		panic(fmt.Sprintf("cachekey: %v", err)) // strings always marshal
	}
	return digest.FromBytes(b)
}

// Value digests a value that should not be stored as written (an ARG or ENV
// value), so records name what changed without repeating it.
func Value(v string) string {
	sum := sha256.Sum256([]byte(v))
	return fmt.Sprintf("sha256:%x", sum)
}

// Explain compares the inputs of a step's earlier record with the current
// ones and says, in words, what changed: the files (by name, however many
// the step reads: files is what it reads now, nil to take them from now's
// "file:" inputs), ARGs, environment, mounts, base image or instruction.
// It names the first ten changes and counts the rest; it returns "" when
// nothing differs.
func Explain(before, now Inputs, files []File) string {
	changed := fileChanges(before, now, files)
	seen := map[string]bool{}
	for k, v := range now {
		seen[k] = true
		if isFileInput(k) || strings.HasPrefix(k, notePrefix) {
			continue
		}
		if old, ok := before[k]; !ok {
			changed = append(changed, describe(asArg(now, k), "added"))
		} else if old != v {
			changed = append(changed, describe(asArg(now, k), "changed"))
		}
	}
	for k := range before {
		if !seen[k] && !isFileInput(k) && !strings.HasPrefix(k, notePrefix) {
			changed = append(changed, describe(k, "removed"))
		}
	}
	sort.Strings(changed)
	// The parent is reported last and only alone: when a step's own inputs
	// changed, those are the reason; otherwise an earlier step is.
	var own []string
	parent := false
	for _, c := range changed {
		if c == parentChanged {
			parent = true
			continue
		}
		own = append(own, c)
	}
	if len(own) == 0 && parent {
		if _, first := now["base"]; first {
			// The first step's parent is the stage's base key: the same
			// image digest, so a layer option (compression, epoch) moved.
			return "the base's layer options changed"
		}
		return parentChanged
	}
	const most = 10
	if len(own) > most {
		own = append(own[:most], fmt.Sprintf("and %d more", len(own)-most))
	}
	return strings.Join(own, "; ")
}

// asArg renames an "env:" input that is an inherited ARG.
func asArg(in Inputs, name string) string {
	if v, ok := strings.CutPrefix(name, "env:"); ok && slices.Contains(strings.Split(in[inheritedArgs], "\n"), v) {
		return "arg:" + v
	}
	return name
}

// parentChanged is the honest reading of a changed "parent": it is the
// chain of results below the step, so the step above produced other bytes.
const parentChanged = "the step above was rebuilt with different bytes"

func describe(name, how string) string {
	kind, what, _ := strings.Cut(name, ":")
	switch kind {
	case "parent":
		return parentChanged
	case "base":
		return "base image digest " + how
	case "file":
		return "file " + what + " " + how
	case "arg":
		return "ARG " + what + " " + how
	case "env":
		return "ENV " + what + " " + how
	case "heredoc":
		return "heredoc " + what + " " + how
	case "mount":
		return "RUN --mount #" + what + " " + how
	case "option":
		return "build option " + what + " " + how
	case "from":
		return "the --from stage or image " + how
	case "url":
		return "URL " + what + " " + how
	}
	return name + " " + how
}

// Chain identifies a root filesystem by what it is made of: base (the
// stage's Base key: platform, base manifest, layer options) and the diffIDs
// of every layer added on top, in order — kiln's form of OCI's ChainID and
// of BuildKit's result links. A step's "parent" input is the chain it runs
// on, never the parent step's key, so a record is only ever used on top of
// the exact bytes it was built on, and a rebuilt step that produced the
// same bytes as before is followed by hits again.
func Chain(base digest.Digest, diffIDs []digest.Digest) digest.Digest {
	layers := make([]string, len(diffIDs))
	for i, d := range diffIDs {
		layers[i] = d.String()
	}
	b, err := json.Marshal(struct {
		Version string   `json:"v"`
		Op      string   `json:"op"`
		Base    string   `json:"base"`
		Layers  []string `json:"layers"`
	}{Version, "chain", base.String(), layers})
	if err != nil {
		panic(fmt.Sprintf("cachekey: %v", err)) // strings always marshal
	}
	return digest.FromBytes(b)
}

// UnbuiltResult stands in for the diffID of a step that was not run, where
// keys are computed without results (keys-only plans in tests). It is
// derived from the step's key and can never equal a real diffID, which is
// the digest of a tar stream. Never record a key computed from it.
func UnbuiltResult(key digest.Digest) digest.Digest {
	return digest.FromString("kiln.unbuilt-result:" + key.String())
}
