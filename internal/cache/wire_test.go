package cache

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// goldenRecord exercises every field of the format.
func goldenRecord() Record {
	return Record{
		Key: digest.FromString("golden key"),
		Layer: Descriptor{
			MediaType: types.OCILayer,
			Digest:    v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)},
			DiffID:    v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("cd", 32)},
			Size:      1234,
		},
		Created:  time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC),
		LastUsed: time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC),
		StepID:   "build: RUN make",
		Inputs:   map[string]string{"arg:V": "sha256:01", "file:src/main.go": "sha256:02"},
	}
}

// TestFormatGolden pins the stored formats: a change here breaks every
// cache already written, so it must come with a FormatVersion bump.
func TestFormatGolden(t *testing.T) {
	rec := goldenRecord()
	noLayer := rec
	noLayer.Key = digest.FromString("no layer")
	noLayer.Layer = Descriptor{}
	noLayer.Inputs = nil
	recordFile, err := json.MarshalIndent(toWire(rec), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	index, err := json.Marshal(wireIndex{Version: FormatVersion, Records: []wireRecord{toWire(rec), toWire(noLayer)}})
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][]byte{"record.json": recordFile, "index.json": index} {
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, append(got, '\n'), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run with -update to create)", err)
		}
		if !bytes.Equal(bytes.TrimSpace(want), got) {
			t.Errorf("%s changed:\n got %s\nwant %s", name, got, want)
		}
	}
	// And it reads back.
	var w wireIndex
	b, _ := os.ReadFile(filepath.Join("testdata", "index.json"))
	if err := json.Unmarshal(b, &w); err != nil {
		t.Fatal(err)
	}
	back, err := fromWire(w.Records[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := sameRecord(back, rec); err != nil || !back.LastUsed.Equal(rec.LastUsed) {
		t.Errorf("round trip: %v", err)
	}
	back, err = fromWire(w.Records[1])
	if err != nil || !back.Layer.IsZero() {
		t.Errorf("layerless record round trip: %+v, %v", back, err)
	}
}

func TestVerifyReader(t *testing.T) {
	data := []byte("cached layer bytes")
	good, _, _ := v1.SHA256(bytes.NewReader(data))
	tests := []struct {
		name    string
		content []byte
		size    int64
		wantErr bool
	}{
		{"right bytes and size", data, int64(len(data)), false},
		{"right bytes, size unknown", data, -1, false},
		{"other bytes", []byte("cached layer bytez"), int64(len(data)), true},
		{"truncated", data[:5], int64(len(data)), true},
		{"too long", append(append([]byte{}, data...), 'x'), int64(len(data)), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := newVerifyReader(io.NopCloser(bytes.NewReader(tt.content)), good, tt.size)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.ReadAll(r)
			if tt.wantErr != (err != nil) {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrDigestMismatch) {
				t.Errorf("err = %v, want ErrDigestMismatch", err)
			}
		})
	}
}

func TestLoadIndexDropsRecordsWithUnlistedBlobs(t *testing.T) {
	rec := goldenRecord()
	listed := rec
	listed.Key = digest.FromString("listed")
	listed.Layer.Digest = v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ef", 32)}
	raw, _ := json.Marshal(wireIndex{Version: 1, Records: []wireRecord{toWire(rec), toWire(listed)}})
	c := &remoteIndex{records: map[digest.Digest]Record{}, blobs: map[v1.Hash]bool{}}
	m := &v1.Manifest{Layers: []v1.Descriptor{{Digest: listed.Layer.Digest}}}
	if err := c.loadIndex(m, raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.records[rec.Key]; ok {
		t.Error("a record whose blob the manifest does not list was loaded")
	}
	if _, ok := c.records[listed.Key]; !ok {
		t.Error("a record with a listed blob was dropped")
	}
}

func TestLoadInlineCreated(t *testing.T) {
	imageCreated := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	layerCreated := time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC)
	h := func(c byte) v1.Hash { return v1.Hash{Algorithm: "sha256", Hex: strings.Repeat(string(c), 64)} }
	m := &v1.Manifest{Layers: []v1.Descriptor{
		{MediaType: types.OCILayer, Digest: h('a'), Size: 10},
		{MediaType: types.OCILayer, Digest: h('b'), Size: 20},
	}}
	tests := []struct {
		name    string
		history []map[string]any
		want    time.Time
	}{
		{"one history entry per layer", []map[string]any{
			{"created": layerCreated}, {"created": imageCreated, "empty_layer": true}, {"created": layerCreated},
		}, layerCreated},
		{"history does not match the layers", []map[string]any{{"created": layerCreated}}, imageCreated},
		{"no history", nil, imageCreated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := map[string]any{
				"created": imageCreated,
				"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{h('c').String(), h('d').String()}},
				"history": tt.history,
				InlineField: map[string]any{"version": 1, "layers": []map[string]any{
					{"key": digest.FromString("k").String(), "index": 1},
				}},
			}
			raw, _ := json.Marshal(cfg)
			c := &remoteIndex{records: map[digest.Digest]Record{}, blobs: map[v1.Hash]bool{}}
			if err := c.loadInline(m, raw); err != nil {
				t.Fatal(err)
			}
			rec, ok := c.records[digest.FromString("k")]
			if !ok {
				t.Fatal("inline record not loaded")
			}
			want := Descriptor{MediaType: types.OCILayer, Digest: h('b'), DiffID: h('d'), Size: 20}
			if rec.Layer != want {
				t.Errorf("layer = %+v, want %+v", rec.Layer, want)
			}
			if !rec.Created.Equal(tt.want) {
				t.Errorf("created = %v, want %v", rec.Created, tt.want)
			}
		})
	}
}
