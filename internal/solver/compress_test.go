package solver

import (
	"context"
	"testing"

	"github.com/kiln-build/kiln/internal/dockerfile"
	"github.com/kiln-build/kiln/internal/image"
	"github.com/kiln-build/kiln/internal/progress"
)

// Which stages make image layers follows FROM alone: a stage the target is
// built FROM, however indirectly, writes the output's encoding; one whose
// files reach the image only through COPY --from writes the cache's.
func TestLayerEncodingPerStage(t *testing.T) {
	const df = `FROM scratch AS tools
FROM scratch AS build
FROM build AS mid
FROM scratch AS other
COPY --from=tools / /
FROM mid
COPY --from=other / /
`
	for target, wantImage := range map[string][]string{
		"":      {"build", "mid", "stage-4"},
		"mid":   {"build", "mid"},
		"other": {"other"},
	} {
		parsed, err := dockerfile.Parse("Dockerfile", []byte(df))
		if err != nil {
			t.Fatal(err)
		}
		b := &builder{opts: Options{Target: target}, df: parsed, sink: progress.Discard, images: map[string]*stage{}}
		b.layer = image.LayerOptions{Compression: image.Gzip}
		b.cacheLayer = image.LayerOptions{Compression: image.Zstd}
		if err := b.setPlatform(); err != nil {
			t.Fatal(err)
		}
		if err := b.prepare(context.Background()); err != nil {
			t.Fatal(err)
		}
		in := map[string]bool{}
		for _, n := range wantImage {
			in[n] = true
		}
		for _, s := range b.stages {
			want := image.Zstd
			if in[s.name] {
				want = image.Gzip
			}
			if got := b.layerFor(s).Compression; got != want {
				t.Errorf("--target=%q: stage %s writes %s, want %s", target, s.name, got, want)
			}
		}
	}
}
