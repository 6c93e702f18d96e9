package testenv

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"maps"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tarEntry is a compact way to write a layer in a test.
type tarEntry struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	link     string
	content  string
}

func d(name string) tarEntry { return tarEntry{name: name, typ: tar.TypeDir, mode: 0o755} }
func f(name, content string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeReg, mode: 0o644, content: content}
}
func sym(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeSymlink, mode: 0o777, link: target}
}
func hard(name, target string) tarEntry {
	return tarEntry{name: name, typ: tar.TypeLink, mode: 0o644, link: target}
}
func wh(name string) tarEntry                     { return f(name, "") }
func withOwner(e tarEntry, uid, gid int) tarEntry { e.uid, e.gid = uid, gid; return e }

func layerOf(t *testing.T, entries ...tarEntry) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link, Size: int64(len(e.content))}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(tw, e.content); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestTree(t *testing.T) {
	tests := []struct {
		name   string
		layers [][]tarEntry
		want   map[string]string // path -> describe(entry)
	}{{
		name:   "single layer, names normalised",
		layers: [][]tarEntry{{d("./"), d("./etc/"), f("./etc/hosts", "h"), sym("/bin", "usr/bin")}},
		want: map[string]string{
			"etc":       "dir 0755 0:0",
			"etc/hosts": `file 0644 0:0 "h"`,
			"bin":       "symlink 0777 0:0 -> usr/bin",
		},
	}, {
		name: "later layer overwrites file, keeps siblings",
		layers: [][]tarEntry{
			{d("a"), f("a/x", "old"), f("a/y", "y")},
			{d("a"), withOwner(f("a/x", "new"), 5, 6)},
		},
		want: map[string]string{"a": "dir 0755 0:0", "a/x": `file 0644 5:6 "new"`, "a/y": `file 0644 0:0 "y"`},
	}, {
		name: "whiteout removes a file",
		layers: [][]tarEntry{
			{d("a"), f("a/x", "x"), f("a/y", "y")},
			{d("a"), wh("a/.wh.x")},
		},
		want: map[string]string{"a": "dir 0755 0:0", "a/y": `file 0644 0:0 "y"`},
	}, {
		name: "whiteout removes a directory and everything under it",
		layers: [][]tarEntry{
			{d("a"), d("a/b"), f("a/b/c", "c"), d("a/b/d"), f("a/b/d/e", "e"), f("a/bb", "keep")},
			{wh("a/.wh.b")},
		},
		want: map[string]string{"a": "dir 0755 0:0", "a/bb": `file 0644 0:0 "keep"`},
	}, {
		name: "whiteout then recreate in the same layer",
		layers: [][]tarEntry{
			{d("a"), f("a/x", "old"), f("a/z", "z")},
			{d("a"), d("a/x"), f("a/x/inner", "i"), wh("a/.wh.z")},
		},
		want: map[string]string{"a": "dir 0755 0:0", "a/x": "dir 0755 0:0", "a/x/inner": `file 0644 0:0 "i"`},
	}, {
		name: "opaque directory hides lower contents, keeps its own (marker after entries)",
		layers: [][]tarEntry{
			{d("a"), f("a/old", "o"), d("a/sub"), f("a/sub/deep", "d"), f("b", "b")},
			{d("a"), f("a/new", "n"), wh("a/.wh..wh..opq")},
		},
		want: map[string]string{"a": "dir 0755 0:0", "a/new": `file 0644 0:0 "n"`, "b": `file 0644 0:0 "b"`},
	}, {
		name: "file replaces directory, children disappear",
		layers: [][]tarEntry{
			{d("a"), f("a/x", "x")},
			{f("a", "now a file")},
		},
		want: map[string]string{"a": `file 0644 0:0 "now a file"`},
	}, {
		name: "directory mode and owner change without losing children",
		layers: [][]tarEntry{
			{d("a"), f("a/x", "x")},
			{withOwner(tarEntry{name: "a", typ: tar.TypeDir, mode: 0o1777}, 1000, 1000)},
		},
		want: map[string]string{"a": "dir 1777 1000:1000", "a/x": `file 0644 0:0 "x"`},
	}, {
		name: "hard link carries its target's content, also across layers",
		layers: [][]tarEntry{
			{f("x", "data")},
			{hard("y", "x"), hard("./z", "/x")},
		},
		want: map[string]string{
			"x": `file 0644 0:0 "data"`,
			"y": `hardlink 0644 0:0 -> x "data"`,
			"z": `hardlink 0644 0:0 -> /x "data"`,
		},
	}, {
		name: "other AUFS metadata is ignored",
		layers: [][]tarEntry{
			{f("x", "x"), d(".wh..wh.plnk"), f(".wh..wh.plnk/123", "")},
		},
		want: map[string]string{"x": `file 0644 0:0 "x"`},
	}, {
		name: "setuid, setgid and sticky bits are kept",
		layers: [][]tarEntry{
			{tarEntry{name: "su", typ: tar.TypeReg, mode: 0o4755}, tarEntry{name: "sg", typ: tar.TypeReg, mode: 0o2711}},
		},
		want: map[string]string{"su": `file 4755 0:0 ""`, "sg": `file 2711 0:0 ""`},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var layers []v1.Layer
			for _, l := range tt.layers {
				layers = append(layers, layerOf(t, l...))
			}
			img, err := mutate.AppendLayers(empty.Image, layers...)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for p, e := range Tree(t, img) {
				got[p] = describe(e)
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("tree mismatch\n got: %s\nwant: %s", dump(got), dump(tt.want))
			}
		})
	}
}

func TestTreeHardLinkToMissingFails(t *testing.T) {
	img, err := mutate.AppendLayers(empty.Image, layerOf(t, hard("y", "nowhere")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := treeOf(img); err == nil {
		t.Fatal("treeOf accepted a hard link to a missing file")
	}
}

func dump(m map[string]string) string {
	var b bytes.Buffer
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "\n  %s: %s", k, m[k])
	}
	return b.String()
}

// describe renders an entry compactly for comparisons and failure messages.
func describe(e Entry) string {
	kind := map[byte]string{tar.TypeReg: "file", tar.TypeDir: "dir", tar.TypeSymlink: "symlink", tar.TypeLink: "hardlink"}[e.Type]
	if kind == "" {
		kind = fmt.Sprintf("type%q", e.Type)
	}
	s := fmt.Sprintf("%s %04o %d:%d", kind, e.Mode, e.UID, e.GID)
	if e.Linkname != "" {
		s += " -> " + e.Linkname
	}
	if e.Type == tar.TypeReg || e.Type == tar.TypeLink {
		s += fmt.Sprintf(" %q", e.Content)
	}
	return s
}

func entryEqual(a, b Entry) bool {
	return a.Type == b.Type && a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID &&
		a.Linkname == b.Linkname && bytes.Equal(a.Content, b.Content)
}
