package cache

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-build/kiln/internal/testenv"
)

// deleteBlob removes a blob from ref's repository through the registry's
// API, as a retention policy or an operator would behind kiln's back.
func deleteBlob(t *testing.T, ref string, d Descriptor) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodDelete, "http://"+r.Context().RegistryStr()+"/v2/"+r.Context().RepositoryStr()+"/blobs/"+d.Digest.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("deleting blob %s: %s", d.Digest, resp.Status)
	}
}

// An index that names a blob the repository lost can still be written
// to: the registry refuses a manifest naming a missing blob, so a flush
// that kept the record would fail on every later build. The record is
// left out instead, the others (old and new) stay, and a store that
// asked HasBlob sees the record as a miss at once.
func TestRegistryFlushLeavesOutRecordsWhoseBlobIsGone(t *testing.T) {
	host := testenv.Registry(t)
	ctx := context.Background()
	ref := newRepo(host)
	recs := putFlush(t, openReg(t, ref, nil), "a", "b")
	deleteBlob(t, ref, recs["a"].Layer)

	for _, asks := range []bool{false, true} {
		w := openReg(t, ref, nil)
		if asks {
			if has, err := w.HasBlob(ctx, recs["b"].Layer); err != nil || !has {
				t.Fatalf("HasBlob(b) = %v, %v; want true", has, err)
			}
			if has, err := w.HasBlob(ctx, recs["a"].Layer); err != nil || has {
				t.Fatalf("HasBlob(a) = %v, %v; want false", has, err)
			}
			if _, err := w.Get(ctx, recs["a"].Key); !errors.Is(err, ErrNotFound) {
				t.Errorf("Get of a record whose blob HasBlob found gone: %v, want ErrNotFound", err)
			}
		}
		name := "c"
		if asks {
			name = "d"
		}
		putFlush(t, w, name)
		got := keysOf(t, openReg(t, ref, nil))
		if got[recs["a"].Key.String()] || !got[recs["b"].Key.String()] || !got[testKey(name).String()] {
			t.Errorf("asked HasBlob=%v: index after the flush holds %v; want b and %s, not a", asks, got, name)
		}
	}
	// Every blob the manifest names is there: a restore of any record works.
	for _, l := range manifestOf(t, ref).Layers {
		st := openReg(t, ref, nil)
		if has, err := st.HasBlob(ctx, Descriptor{Digest: l.Digest}); err != nil || !has {
			t.Errorf("the manifest names blob %s the repository lacks (%v)", l.Digest, err)
		}
	}
}
