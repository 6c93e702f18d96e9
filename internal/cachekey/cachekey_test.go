package cachekey

import (
	"testing"

	"github.com/opencontainers/go-digest"
)

// The key of fixed inputs must never change once shipped: a change here
// orphans every cache entry in the field. Bump Version when it must.
func TestKeyGolden(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"scratch base", Base("linux/amd64", "", map[string]string{"compression": "gzip"}).String(),
			"sha256:55bd0e2f1b263ef28a59429a60a54e920ff06eb97c61d479b97edb876bd3222d"},
		{"chain", Chain("sha256:aa", []digest.Digest{"sha256:01", "sha256:02"}).String(),
			"sha256:e813f80b6ceb79d5a8baf8d50b8c1ccfd9db1813b721208fe71ca1ded5bc6221"},
		{"copy", Key("copy", Inputs{"parent": "sha256:00", "instruction": "COPY a /a", "dest": "/a", "file:a": "sha256:11"}).String(),
			"sha256:fab8bdc67d5d756aab0283944fc8f05553bed015fb7e16f6a5283288e6af8f62"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: key %s, pinned %s", tt.name, tt.got, tt.want)
		}
	}
}

func TestKeyIsOrderFreeAndSensitive(t *testing.T) {
	a := Key("run", Inputs{"x": "1", "y": "2"})
	b := Key("run", Inputs{"y": "2", "x": "1"})
	if a != b {
		t.Error("the key depends on map order")
	}
	for _, other := range []Inputs{{"x": "1", "y": "3"}, {"x": "1"}, {"x": "1", "y": "2", "z": ""}} {
		if Key("run", other) == a {
			t.Errorf("inputs %v collide with {x:1 y:2}", other)
		}
	}
	if Key("copy", Inputs{"x": "1", "y": "2"}) == a {
		t.Error("the op is not part of the key")
	}
	// A value containing the separator cannot forge another pair.
	if Key("run", Inputs{"x": `1","y":"2`}) == Key("run", Inputs{"x": "1", "y": "2"}) {
		t.Error("values can forge pairs")
	}
}

func TestBaseOptions(t *testing.T) {
	plain := Base("linux/amd64", "sha256:aa", nil)
	if Base("linux/amd64", "sha256:bb", nil) == plain {
		t.Error("the base manifest digest is not in the key")
	}
	if Base("linux/amd64", "sha256:aa", map[string]string{"compression": "zstd"}) == plain {
		t.Error("layer compression is not in the key")
	}
	if Base("linux/arm64", "sha256:aa", nil) == plain {
		t.Error("the platform is not in the key")
	}
}

func TestExplain(t *testing.T) {
	before := Inputs{"parent": "p1", "instruction": "COPY . /app", "file:src/a.go": "d1", "file:src/b.go": "d2", "arg:VERSION": "v1"}
	tests := []struct {
		name string
		now  Inputs
		want string
	}{
		{"nothing", Inputs{"parent": "p1", "instruction": "COPY . /app", "file:src/a.go": "d1", "file:src/b.go": "d2", "arg:VERSION": "v1"}, ""},
		{"one file", Inputs{"parent": "p1", "instruction": "COPY . /app", "file:src/a.go": "d1", "file:src/b.go": "CHANGED", "arg:VERSION": "v1"}, "file src/b.go changed"},
		{"file added and removed", Inputs{"parent": "p1", "instruction": "COPY . /app", "file:src/a.go": "d1", "file:src/c.go": "d3", "arg:VERSION": "v1"}, "file src/b.go removed; file src/c.go added"},
		{"arg", Inputs{"parent": "p1", "instruction": "COPY . /app", "file:src/a.go": "d1", "file:src/b.go": "d2", "arg:VERSION": "v2"}, "ARG VERSION changed"},
		{"only the parent", Inputs{"parent": "p2", "instruction": "COPY . /app", "file:src/a.go": "d1", "file:src/b.go": "d2", "arg:VERSION": "v1"}, "the step above was rebuilt with different bytes"},
		{"own change wins over parent", Inputs{"parent": "p2", "instruction": "COPY . /app", "file:src/a.go": "X", "file:src/b.go": "d2", "arg:VERSION": "v1"}, "file src/a.go changed"},
	}
	for _, tt := range tests {
		if got := Explain(before, tt.now, nil); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
	if got := Explain(Inputs{"base": "a"}, Inputs{"base": "b"}, nil); got != "base image digest changed" {
		t.Errorf("base: %q", got)
	}
}

func TestValueHidesValue(t *testing.T) {
	v := Value("hunter2")
	if v == "hunter2" || len(v) != len("sha256:")+64 || Value("hunter2") != v || Value("hunter3") == v {
		t.Errorf("Value = %q", v)
	}
}

// A chain names contents: the same base and layers in the same order are
// the same chain however they were reached; anything else is not.
func TestChain(t *testing.T) {
	a, b := digest.FromString("a"), digest.FromString("b")
	base := Base("linux/amd64", "sha256:aa", nil)
	ab := Chain(base, []digest.Digest{a, b})
	if Chain(base, []digest.Digest{a, b}) != ab {
		t.Error("a chain is not a function of its contents")
	}
	others := map[string]digest.Digest{
		"order":       Chain(base, []digest.Digest{b, a}),
		"fewer":       Chain(base, []digest.Digest{a}),
		"none":        Chain(base, nil),
		"other base":  Chain(Base("linux/amd64", "sha256:bb", nil), []digest.Digest{a, b}),
		"base itself": base,
	}
	for name, c := range others {
		if c == ab {
			t.Errorf("%s: collides with the chain [a b]", name)
		}
	}
	if UnbuiltResult(ab) == UnbuiltResult(a) || UnbuiltResult(a) == a {
		t.Error("UnbuiltResult must be distinct per key and never the key itself")
	}
}
