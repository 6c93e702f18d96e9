package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// imageAttempts bounds how often Image resolves a reference again after a
// body that arrived cut short or corrupted (the client's own retries cover
// only statuses and failed connections, not a bad body).
const imageAttempts = 3

// Image fetches the manifest of ref and its config and returns the image;
// layers stay lazy and are downloaded only when read. An index is resolved
// to the child matching platform (zero fields default to linux and the host
// architecture). A single-platform image is returned whatever its platform,
// as docker does. A manifest or config that arrives truncated or fails its
// digest is fetched again, a few times, before the error is returned.
func Image(ctx context.Context, ref string, platform v1.Platform, o Options) (v1.Image, error) {
	r, err := o.Reference(ref)
	if err != nil {
		return nil, err
	}
	platform = DefaultPlatform(platform)
	for attempt := 1; ; attempt++ {
		img, err := imageOnce(ctx, r, platform, o)
		if err == nil {
			// The config is read now, inside the retries: every caller
			// needs it, and it is one small request.
			_, err = img.RawConfigFile()
			if err == nil {
				return img, nil
			}
			err = fmt.Errorf("%s: config: %w", r, err)
			// Any failure here may come of a damaged manifest: fetched
			// by tag, it has no digest to check, and a flipped bit in
			// it names a config the registry does not have (a 404).
			if attempt < imageAttempts && ctx.Err() == nil {
				if err := sleepAttempt(ctx, attempt); err != nil {
					return nil, err
				}
				continue
			}
		}
		if attempt == imageAttempts || !badBody(ctx, err) {
			return nil, err
		}
		if err := sleepAttempt(ctx, attempt); err != nil {
			return nil, err
		}
	}
}

// sleepAttempt waits a little longer after each failed attempt.
func sleepAttempt(ctx context.Context, attempt int) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		return nil
	}
}

// badBody reports whether err may be a body damaged in transit, worth
// fetching again: not a missing image, an unreachable registry, an
// answer with an HTTP status (the client retried those it could), nor an
// ended context.
func badBody(ctx context.Context, err error) bool {
	var terr *transport.Error
	return ctx.Err() == nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrUnreachable) && !errors.As(err, &terr)
}

func imageOnce(ctx context.Context, r name.Reference, platform v1.Platform, o Options) (v1.Image, error) {
	desc, err := remote.Get(r, o.RemoteOptions(ctx)...)
	if err != nil {
		return nil, classify(r, err)
	}
	if err := validateManifest(fmt.Sprintf("%s: manifest %s", r, desc.Digest), desc.Manifest); err != nil {
		return nil, err
	}
	if !desc.MediaType.IsIndex() {
		img, err := desc.Image()
		if err != nil {
			return nil, classify(r, err)
		}
		return img, nil
	}
	idx, err := desc.ImageIndex()
	if err != nil {
		return nil, classify(r, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, classify(r, err)
	}
	var have []string
	for _, m := range im.Manifests {
		if m.Platform == nil || !m.MediaType.IsImage() {
			continue
		}
		if Matches(*m.Platform, platform) {
			img, err := idx.Image(m.Digest)
			if err != nil {
				return nil, classify(r, err)
			}
			raw, err := img.RawManifest()
			if err != nil {
				return nil, classify(r, err)
			}
			if err := validateManifest(fmt.Sprintf("%s: manifest %s (%s)", r, m.Digest, m.Platform), raw); err != nil {
				return nil, err
			}
			return img, nil
		}
		if m.Platform.OS != "unknown" {
			have = append(have, m.Platform.String())
		}
	}
	return nil, fmt.Errorf("%s: %w: no image for platform %s (index has %s)",
		r, ErrNotFound, platform.String(), strings.Join(have, ", "))
}

// DefaultPlatform fills the zero fields of p: linux, and the architecture
// kiln runs on.
func DefaultPlatform(p v1.Platform) v1.Platform {
	if p.OS == "" {
		p.OS = "linux"
	}
	if p.Architecture == "" {
		p.Architecture = runtime.GOARCH
	}
	return p
}

// Matches reports whether an index entry's platform have satisfies the
// wanted platform: same OS and architecture, and the same variant when one
// is wanted (arm64 without variant equals arm64/v8, as containerd treats it).
func Matches(have, want v1.Platform) bool {
	if have.OS != want.OS || have.Architecture != want.Architecture {
		return false
	}
	if want.Variant == "" {
		return true
	}
	hv, wv := have.Variant, want.Variant
	if have.Architecture == "arm64" {
		if hv == "" {
			hv = "v8"
		}
		if wv == "" {
			wv = "v8"
		}
	}
	return hv == wv
}

// Artifact is what Push uploads: a v1.Image, or a v1.ImageIndex (pushed
// with every manifest and blob it names).
type Artifact interface {
	Digest() (v1.Hash, error)
	MediaType() (types.MediaType, error)
	RawManifest() ([]byte, error)
}

// Push uploads img under every tag (full references such as
// "127.0.0.1:5000/app:v1") and returns its manifest digest. Blobs upload
// concurrently and blobs the registry already has are skipped. All blobs and
// the manifest are first pushed by digest into every repository involved;
// only then are tags pointed at it, so a failed upload moves no tag. Tags
// in several repositories of one registry upload each layer once and
// cross-repository mount it into the others (an index's children upload
// into each repository: ggcr mounts only an image's own layers).
func Push(ctx context.Context, img Artifact, tags []string, o Options) (v1.Hash, error) {
	digest, refs, repos, err := pushTargets(img, tags, o)
	if err != nil {
		return v1.Hash{}, err
	}
	pusher, err := remote.NewPusher(o.RemoteOptions(ctx)...)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push: %w", err)
	}
	// The first repository of each registry receives the blobs; the
	// others mount them from it rather than upload them again.
	firstOn := map[string]name.Reference{}
	for _, repo := range repos {
		byDigest := repo.Digest(digest.String())
		var src remote.Taggable = img
		if first, ok := firstOn[repo.RegistryStr()]; ok {
			if one, isImage := img.(v1.Image); isImage {
				src = MountFrom(one, first)
			}
		} else {
			firstOn[repo.RegistryStr()] = byDigest
		}
		if err := pusher.Push(ctx, byDigest, src); err != nil {
			return v1.Hash{}, fmt.Errorf("push %s: %w", repo, classify(byDigest, err))
		}
	}
	for _, r := range refs {
		if _, ok := r.(name.Digest); ok {
			continue // already there
		}
		// Put sends only the manifest: the blobs are in place.
		if err := pusher.Put(ctx, r, img); err != nil {
			return v1.Hash{}, fmt.Errorf("tagging %s: %w", r, classify(r, err))
		}
	}
	return digest, nil
}

// pushTargets parses tags into the references Push writes and the
// repositories they name, each once, in order.
func pushTargets(img Artifact, tags []string, o Options) (v1.Hash, []name.Reference, []name.Repository, error) {
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, nil, nil, fmt.Errorf("computing image digest: %w", err)
	}
	if len(tags) == 0 {
		return v1.Hash{}, nil, nil, errors.New("push: no image name given")
	}
	refs := make([]name.Reference, 0, len(tags))
	var repos []name.Repository
	seen := map[string]bool{}
	for _, t := range tags {
		r, err := o.Reference(t)
		if err != nil {
			return v1.Hash{}, nil, nil, err
		}
		if d, ok := r.(name.Digest); ok && d.DigestStr() != digest.String() {
			return v1.Hash{}, nil, nil, fmt.Errorf("push %s: image digest is %s", t, digest)
		}
		refs = append(refs, r)
		if repo := r.Context(); !seen[repo.String()] {
			seen[repo.String()] = true
			repos = append(repos, repo)
		}
	}
	return digest, refs, repos, nil
}

// UploadBlobs sends ahead the blobs a later Push(img, tags) would send
// first: the config and the layers, into the first repository of each
// registry (the one Push uploads into; it mounts into the others), HEAD
// first, concurrently, and never a manifest. Until Push sends the manifest
// nothing names these blobs, so nothing can be pulled and no tag moves;
// Push then finds them there and sends little more than manifests. skip
// names layers left to Push (someone else is uploading them now, and two
// uploads of one blob would send its bytes twice).
func UploadBlobs(ctx context.Context, img v1.Image, tags []string, skip map[v1.Hash]bool, o Options) error {
	digest, _, repos, err := pushTargets(img, tags, o)
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	cfg, err := partial.ConfigLayer(img)
	if err != nil {
		return fmt.Errorf("upload: config: %w", err)
	}
	blobs := []v1.Layer{cfg}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return fmt.Errorf("upload: %w", err)
		}
		if !skip[d] {
			blobs = append(blobs, l)
		}
	}
	pusher, err := remote.NewPusher(o.RemoteOptions(ctx)...)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	jobs := o.Jobs
	if jobs <= 0 {
		jobs = DefaultJobs
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs)
	first := map[string]bool{}
	for _, repo := range repos {
		if first[repo.RegistryStr()] {
			continue
		}
		first[repo.RegistryStr()] = true
		for _, l := range blobs {
			g.Go(func() error {
				if err := pusher.Upload(gctx, repo, l); err != nil {
					return fmt.Errorf("upload to %s: %w", repo, classify(repo.Digest(digest.String()), err))
				}
				return nil
			})
		}
	}
	return g.Wait()
}

// classify wraps err with ErrUnreachable or ErrNotFound when it is one, and
// otherwise keeps the registry's diagnostic as it is.
func classify(ref name.Reference, err error) error {
	if err == nil {
		return nil
	}
	host := ref.Context().RegistryStr()
	var terr *transport.Error
	if errors.As(err, &terr) {
		if isNotFound(terr) {
			return fmt.Errorf("%s: %w: %w", ref, ErrNotFound, err)
		}
		return fmt.Errorf("%s: %w", ref, err)
	}
	var uaErr x509.UnknownAuthorityError
	var hdrErr tls.RecordHeaderError
	if errors.As(err, &uaErr) || errors.As(err, &hdrErr) {
		return fmt.Errorf("%s: %w (if %s is meant to be reached without TLS verification, name it with --insecure-registry)", ref, err, host)
	}
	var opErr *net.OpError
	var dnsErr *net.DNSError
	if (errors.As(err, &opErr) && opErr.Op == "dial") || errors.As(err, &dnsErr) {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, host, err)
	}
	return fmt.Errorf("%s: %w", ref, err)
}

func isNotFound(e *transport.Error) bool {
	if e.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range e.Errors {
		switch d.Code {
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
			return true
		}
	}
	return false
}
