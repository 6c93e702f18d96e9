package testenv

import (
	"errors"
	"io"
	"net/http"
	neturl "net/url"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// Disabled, the proxy is a plain pass-through; enabled at rate 1, every
// request fails in one of the advertised ways, and the same seed makes
// the same choices.
func TestFaultProxy(t *testing.T) {
	reg := Registry(t)
	p := NewFaultProxy(t, reg, 1, 1)
	p.SetEnabled(false)
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(p.Host+"/faults/img:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push through the disabled proxy: %v", err)
	}
	back, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(back); err != nil {
		t.Fatalf("pull through the disabled proxy: %v", err)
	}

	p.SetEnabled(true)
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	url := "http://" + p.Host + "/v2/faults/img/blobs/" + d.String()
	want, err := io.ReadAll(must(layers[0].Compressed()))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		resp, err := http.Get(url)
		if err != nil {
			continue // reset
		}
		body, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusInternalServerError:
		case rerr != nil && errors.Is(rerr, io.ErrUnexpectedEOF): // truncated
		case rerr == nil && resp.StatusCode == http.StatusOK && string(body) != string(want): // bit flip
		case rerr == nil && resp.StatusCode == http.StatusOK:
			// a stall, then the real body: only allowed for stalls
		default:
			t.Errorf("request %d: status %d, read error %v", i, resp.StatusCode, rerr)
		}
	}
	counts, total := p.Counts()
	if total < 12 || counts[FaultStall]+counts[Fault500]+counts[FaultReset]+counts[FaultTruncate]+counts[FaultBitFlip] < 12 {
		t.Errorf("at rate 1 every request is faulted: %s", p)
	}
	again := NewFaultProxy(t, reg, 1, 1)
	for range 5 {
		again.pick(&http.Request{Method: http.MethodGet, URL: must(urlParse("/v2/x/blobs/y"))})
	}
	c1, _ := again.Counts()
	third := NewFaultProxy(t, reg, 1, 1)
	for range 5 {
		third.pick(&http.Request{Method: http.MethodGet, URL: must(urlParse("/v2/x/blobs/y"))})
	}
	if c2, _ := third.Counts(); len(c1) != len(c2) || func() bool {
		for k, v := range c1 {
			if c2[k] != v {
				return true
			}
		}
		return false
	}() {
		t.Errorf("one seed, different choices: %v then %v", c1, c2)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func urlParse(s string) (*neturl.URL, error) { return neturl.Parse(s) }
