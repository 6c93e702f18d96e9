package cache

import (
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// FormatVersion is the version of both the local directory layout and the
// registry index documented in doc.go. Readers refuse higher versions.
const FormatVersion = 1

// IndexMediaType is the media type of the registry cache manifest's config
// blob: kiln's index.
const IndexMediaType types.MediaType = "application/vnd.kiln.cache.index.v1+json"

// InlineField is the top-level image config field in which pushed images
// carry their steps' keys (inline cache).
const InlineField = "kiln.cache.v1"

// wireRecord is Record as stored: in a local record file and as an entry of
// the registry index. Field names are part of the format; never rename them.
type wireRecord struct {
	Key      string            `json:"key"`
	Layer    *wireDescriptor   `json:"layer,omitempty"`
	Created  time.Time         `json:"created"`
	LastUsed time.Time         `json:"lastUsed"`
	StepID   string            `json:"stepID,omitempty"`
	Inputs   map[string]string `json:"inputs,omitempty"`
}

type wireDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	DiffID    string `json:"diffID"`
	Size      int64  `json:"size"`
}

// wireIndex is the registry index (the cache manifest's config blob).
type wireIndex struct {
	Version int          `json:"version"`
	Records []wireRecord `json:"records"`
}

// inlineCache is the InlineField of an image config.
type inlineCache struct {
	Version int `json:"version"`
	Layers  []struct {
		Key   string `json:"key"`
		Index int    `json:"index"`
	} `json:"layers"`
}

func toWire(r Record) wireRecord {
	w := wireRecord{
		Key:      r.Key.String(),
		Created:  r.Created.UTC(),
		LastUsed: r.LastUsed.UTC(),
		StepID:   r.StepID,
		Inputs:   r.Inputs,
	}
	if !r.Layer.IsZero() {
		w.Layer = &wireDescriptor{
			MediaType: string(r.Layer.MediaType),
			Digest:    r.Layer.Digest.String(),
			DiffID:    r.Layer.DiffID.String(),
			Size:      r.Layer.Size,
		}
	}
	return w
}

func fromWire(w wireRecord) (Record, error) {
	key, err := digest.Parse(w.Key)
	if err != nil {
		return Record{}, fmt.Errorf("record key %q: %w", w.Key, err)
	}
	r := Record{
		Key:      key,
		Created:  w.Created,
		LastUsed: w.LastUsed,
		StepID:   w.StepID,
		Inputs:   w.Inputs,
	}
	if w.Layer != nil {
		d, err := v1.NewHash(w.Layer.Digest)
		if err != nil {
			return Record{}, fmt.Errorf("record %s: layer digest: %w", w.Key, err)
		}
		diff, err := v1.NewHash(w.Layer.DiffID)
		if err != nil {
			return Record{}, fmt.Errorf("record %s: layer diffID: %w", w.Key, err)
		}
		r.Layer = Descriptor{MediaType: types.MediaType(w.Layer.MediaType), Digest: d, DiffID: diff, Size: w.Layer.Size}
	}
	return r, nil
}
