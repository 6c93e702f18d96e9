package output

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/moby/moby/client"
)

// writeDockerTar writes img in `docker save` format with RepoTags in
// docker's familiar form ("app:v1"), as BuildKit's docker exporter does.
func writeDockerTar(w io.Writer, img v1.Image, names []string) error {
	refs := map[name.Reference]v1.Image{}
	for _, n := range names {
		named, err := reference.ParseNormalizedNamed(n)
		if err != nil {
			return fmt.Errorf("image name %q: %w", n, err)
		}
		if _, ok := named.(reference.Tagged); !ok {
			continue // a digest-only name cannot be a RepoTag
		}
		tag, err := name.NewTag(reference.FamiliarString(named))
		if err != nil {
			return fmt.Errorf("image name %q: %w", n, err)
		}
		refs[tag] = img
	}
	if len(refs) == 0 {
		// Untagged: docker loads it by ID. Any repository works as the key.
		d, err := img.Digest()
		if err != nil {
			return fmt.Errorf("computing manifest digest: %w", err)
		}
		ref, err := name.NewDigest("untagged@" + d.String())
		if err != nil {
			return err
		}
		refs[ref] = img
	}
	if err := tarball.MultiRefWrite(refs, w); err != nil {
		return fmt.Errorf("writing docker archive: %w", err)
	}
	return nil
}

// ErrDockerUnavailable: no Docker engine answered at the configured host.
var ErrDockerUnavailable = errors.New("docker engine unavailable")

// loadDocker streams img into a Docker engine through its load API, the
// way `docker load` does, and checks the engine's reply for errors.
func loadDocker(ctx context.Context, host string, img v1.Image, names []string) error {
	opts := []client.Opt{client.FromEnv}
	if host != "" {
		opts = append(opts, client.WithHost(host))
	}
	cli, err := client.New(opts...)
	if err != nil {
		return fmt.Errorf("docker client: %w", err)
	}
	defer cli.Close()
	if _, err := cli.Ping(ctx, client.PingOptions{}); err != nil {
		return fmt.Errorf("%w at %s: %w", ErrDockerUnavailable, cli.DaemonHost(), err)
	}
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(writeDockerTar(pw, img, names))
	}()
	resp, err := cli.ImageLoad(ctx, pr, client.ImageLoadWithQuiet(true))
	if err != nil {
		pr.CloseWithError(err)
		return fmt.Errorf("docker load: %w", err)
	}
	defer resp.Close()
	return checkLoadStream(resp)
}

// checkLoadStream reads the engine's JSON message stream and returns the
// first error it reports.
func checkLoadStream(r io.Reader) error {
	dec := json.NewDecoder(r)
	var msgs []string
	for {
		var m struct {
			Stream      string `json:"stream"`
			Error       string `json:"error"`
			ErrorDetail *struct {
				Message string `json:"message"`
			} `json:"errorDetail"`
		}
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return fmt.Errorf("docker load: reading reply: %w (after %q)", err, strings.Join(msgs, ""))
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			return fmt.Errorf("docker load: %s", m.ErrorDetail.Message)
		}
		if m.Error != "" {
			return fmt.Errorf("docker load: %s", m.Error)
		}
		msgs = append(msgs, m.Stream)
	}
}
