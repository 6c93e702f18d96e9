package attest

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Mode is buildx's --provenance=mode=: how much of the request the
// attestation records.
type Mode string

const (
	// ModeMin, buildx's default, leaves out build args, labels, secrets
	// and ssh ids, which may say more about the build than its publisher
	// wants to.
	ModeMin Mode = "min"
	// ModeMax records the whole request.
	ModeMax Mode = "max"
)

// Version is the SLSA provenance version (buildx --provenance=version=).
type Version string

const (
	// SLSA1 is https://slsa.dev/provenance/v1, BuildKit's default.
	SLSA1 Version = "v1"
	// SLSA02 is https://slsa.dev/provenance/v0.2, BuildKit's older layout,
	// still asked for by verifiers that predate v1.
	SLSA02 Version = "v0.2"
)

// The predicate types and build types BuildKit writes; a verifier matches
// on them to know how to read the rest.
const (
	PredicateSLSA1  = "https://slsa.dev/provenance/v1"
	PredicateSLSA02 = "https://slsa.dev/provenance/v0.2"
	BuildTypeSLSA1  = "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md"
	BuildTypeSLSA02 = "https://mobyproject.org/buildkit@v1"
)

// StatementType is the in-toto statement type BuildKit gives every
// attestation, whatever the predicate version.
const StatementType = "https://in-toto.io/Statement/v1"

// Provenance describes one platform image's build as BuildKit's provenance
// records it. The zero value of each field means "not set"; Statement
// applies BuildKit's normalization (sorting, deduplication, credential
// redaction), so callers pass what they have in any order.
type Provenance struct {
	// Mode is "min" when empty, buildx's default.
	Mode Mode
	// Version is SLSA1 when empty, BuildKit's default.
	Version Version
	// BuilderID is buildx's builder-id= (runDetails.builder.id), typically
	// the URL of the CI run; BuildKit writes "" when unset.
	BuilderID string
	// Reproducible is buildx's reproducible=true: a claim, not a check.
	Reproducible bool

	// DockerfilePath is the "filename" frontend option, recorded as
	// configSource.path: buildx sends the Dockerfile's base name for a
	// local -f, or its path in the repository for a git context.
	DockerfilePath string
	// ContextURI and ContextDigest are configSource.uri and .digest for a
	// remote context: for git, the URL in BuildKit's fragment form
	// (remote#ref[:subdir]) and {"sha1": commit}. Both empty for a local
	// context. Credentials in the URL are redacted.
	ContextURI    string
	ContextDigest map[string]string
	// Locals names the local sources the build read (request.locals):
	// "context" and "dockerfile" for a local build, none for a build
	// entirely from a git or https context. Any local source makes
	// resolvedDependencies incomplete, as BuildKit cannot digest it.
	Locals []string

	// BuildArgs, Labels and Target are the request args buildx sends
	// ("build-arg:NAME", "label:NAME", "target"). Min mode drops build
	// args and labels, marking the request incomplete.
	BuildArgs map[string]string
	Labels    map[string]string
	Target    string
	// Secrets and SSH are the secret and ssh mounts the build's steps used;
	// only their ids are recorded, and only in max mode. Never the value.
	Secrets []Secret
	SSH     []Secret
	// VCS is what buildx's git info sends as "vcs:" args for a local
	// context (keys "source", "revision", "localdir:context",
	// "localdir:dockerfile"), recorded as buildkit_metadata.vcs in both
	// modes. Empty values are dropped and credentials in "source" redacted.
	VCS map[string]string

	// BuilderPlatform is the machine that ran the build
	// (internalParameters.builderPlatform; v0.2 invocation.environment).
	// Required: BuildKit always writes it.
	BuilderPlatform v1.Platform
	// TargetPlatform is the platform of this image
	// (internalParameters.targetPlatform, not written in v0.2).
	TargetPlatform v1.Platform

	// Images, Git and HTTP are what this platform's build resolved,
	// recorded as resolvedDependencies (v0.2 materials). In a
	// multi-platform build each platform's statement lists its own
	// images, as BuildKit's does.
	Images []ImageSource
	Git    []GitSource
	HTTP   []HTTPSource
	// NoNetwork says no RUN step had network access (every RUN used
	// --network=none, or there was none). With no Locals, BuildKit then
	// calls the build hermetic; the zero value claims nothing.
	NoNetwork bool

	// InvocationID identifies the build; every platform of one build
	// shares it. A zero time is left out.
	InvocationID          string
	StartedOn, FinishedOn time.Time
}

// Secret is a secret or ssh mount as the provenance records it: its id,
// and whether the step could run without it (a Dockerfile mount without
// required=true). A value is never recorded.
type Secret struct {
	ID       string
	Optional bool
}

// ImageSource is an image the build resolved: a FROM, COPY --from or RUN
// --mount=from= image.
type ImageSource struct {
	// Ref is the reference as the Dockerfile named it, after ARG
	// expansion ("alpine:3.20", "ghcr.io/o/r@sha256:…").
	Ref string
	// Platform is the platform it was resolved for; the zero value writes
	// no platform qualifier.
	Platform v1.Platform
	// Digest is what Ref resolved to: for a multi-platform image, the
	// index digest, as BuildKit records it.
	Digest v1.Hash
}

// GitSource is a git repository the build fetched (a git context, ADD of
// a git URL).
type GitSource struct {
	// URL is the remote with "#ref" appended when a ref was asked for, as
	// BuildKit writes it; credentials are redacted.
	URL string
	// Commit is the checked-out commit: 40 hex digits (sha1) or 64
	// (sha256).
	Commit string
}

// HTTPSource is a file the build downloaded (ADD https://…, an https
// context).
type HTTPSource struct {
	URL    string
	Digest v1.Hash
}

// Subject is an artifact the statement is about: for an image, its
// manifest digest under one of its names.
type Subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// Statement returns the in-toto statement JSON that BuildKit writes for
// provenance p about subjects. A nil subjects writes "subject": [], as
// BuildKit does for an image pushed without a name.
func Statement(subjects []Subject, p Provenance) ([]byte, error) {
	pred, typ, err := predicate(p)
	if err != nil {
		return nil, err
	}
	if subjects == nil {
		subjects = []Subject{}
	}
	return json.Marshal(statement{
		Type:          StatementType,
		PredicateType: typ,
		Subject:       subjects,
		Predicate:     pred,
	})
}

// predicate builds the predicate for p's version, and its predicate type.
func predicate(p Provenance) (any, string, error) {
	mode := cmp.Or(p.Mode, ModeMin)
	if mode != ModeMin && mode != ModeMax {
		return nil, "", fmt.Errorf("attest: provenance mode %q: want min or max", p.Mode)
	}
	if p.BuilderPlatform.OS == "" || p.BuilderPlatform.Architecture == "" {
		return nil, "", fmt.Errorf("attest: builder platform %q: want os/arch", p.BuilderPlatform.String())
	}
	deps, err := resolved(p)
	if err != nil {
		return nil, "", err
	}

	req, complete := request(p, mode)
	// BuildKit counts any local source as an input it could not digest.
	materials := len(req.Locals) == 0
	cs := configSource{URI: redact(p.ContextURI), Digest: nonEmpty(p.ContextDigest), Path: p.DockerfilePath}
	bk := buildkitMetadata{VCS: vcs(p.VCS)}
	hermetic := materials && p.NoNetwork
	started, finished := timePtr(p.StartedOn), timePtr(p.FinishedOn)

	switch cmp.Or(p.Version, SLSA1) {
	case SLSA1:
		target := ""
		if p.TargetPlatform.OS != "" || p.TargetPlatform.Architecture != "" {
			target = formatAll(normalize(p.TargetPlatform))
		}
		return predicate1{
			BuildDefinition: buildDefinition1{
				BuildType:            BuildTypeSLSA1,
				ResolvedDependencies: deps,
				ExternalParameters:   externalParameters1{ConfigSource: cs, Request: req},
				InternalParameters: internalParameters1{
					BuilderPlatform: format(normalize(p.BuilderPlatform)),
					TargetPlatform:  target,
				},
			},
			RunDetails: runDetails1{
				Builder: builder{ID: p.BuilderID},
				Metadata: metadata1{
					InvocationID: p.InvocationID,
					StartedOn:    started,
					FinishedOn:   finished,
					BuildKit:     bk,
					Hermetic:     hermetic,
					Completeness: completeness1{Request: complete, ResolvedDependencies: materials},
					Reproducible: p.Reproducible,
				},
			},
		}, PredicateSLSA1, nil
	case SLSA02:
		return predicate02{
			Builder:   builder{ID: p.BuilderID},
			BuildType: BuildTypeSLSA02,
			Materials: deps,
			Invocation: invocation02{
				ConfigSource: configSource02{URI: cs.URI, Digest: cs.Digest, EntryPoint: cs.Path},
				Parameters:   req,
				Environment:  environment02{Platform: format(normalize(p.BuilderPlatform))},
			},
			Metadata: metadata02{
				BuildInvocationID: p.InvocationID,
				BuildStartedOn:    started,
				BuildFinishedOn:   finished,
				Completeness:      completeness02{Parameters: complete, Environment: true, Materials: materials},
				Reproducible:      p.Reproducible,
				BuildKit:          bk,
				Hermetic:          hermetic,
			},
		}, PredicateSLSA02, nil
	default:
		return nil, "", fmt.Errorf("attest: provenance version %q: want v1 or v0.2", p.Version)
	}
}

// request is externalParameters.request (v0.2 invocation.parameters), and
// whether it is complete: min mode leaves build args and labels out and
// says so.
func request(p Provenance, mode Mode) (parameters, bool) {
	req := parameters{Frontend: "dockerfile.v0"}
	complete := true
	args := map[string]string{}
	if mode == ModeMax {
		for k, v := range p.BuildArgs {
			args["build-arg:"+k] = v
		}
		for k, v := range p.Labels {
			args["label:"+k] = v
		}
		req.Secrets = secrets(p.Secrets, "")
		req.SSH = secrets(p.SSH, "default")
	} else if len(p.BuildArgs) > 0 || len(p.Labels) > 0 {
		complete = false
	}
	if p.Target != "" {
		args["target"] = p.Target
	}
	if len(args) > 0 {
		req.Args = args
	}
	for _, name := range slices.Compact(slices.Sorted(slices.Values(p.Locals))) {
		req.Locals = append(req.Locals, local{Name: name})
	}
	return req, complete
}

// secrets sorts ss by id and merges repeats, required winning over
// optional, as BuildKit's capture does; an empty id becomes def.
func secrets(ss []Secret, def string) []secret {
	var out []secret
	for _, s := range ss {
		id := cmp.Or(s.ID, def)
		if i := slices.IndexFunc(out, func(o secret) bool { return o.ID == id }); i >= 0 {
			out[i].Optional = out[i].Optional && s.Optional
			continue
		}
		out = append(out, secret{ID: id, Optional: s.Optional})
	}
	slices.SortFunc(out, func(a, b secret) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// resolved lists p's sources as BuildKit's resolvedDependencies: images
// (deduplicated, an image named by digest dropped when its name and tag
// are there too, sorted by normalized reference), then git and HTTP
// sources, each sorted by URL.
func resolved(p Provenance) ([]resource, error) {
	type captured struct {
		ref, nameTag string
		canonical    bool
		src          ImageSource
	}
	var images []captured
	tagged := map[string]bool{}
	for _, src := range p.Images {
		named, err := reference.ParseNormalizedNamed(src.Ref)
		if err != nil {
			return nil, fmt.Errorf("attest: image %q: %w", src.Ref, err)
		}
		// The Dockerfile frontend resolves "alpine" as
		// "docker.io/library/alpine:latest", the name BuildKit sorts by.
		named = reference.TagNameOnly(named)
		src.Platform = normalizeIfSet(src.Platform)
		img := captured{ref: named.String(), src: src}
		if slices.ContainsFunc(images, func(o captured) bool { return o.ref == img.ref && samePlatform(o.src.Platform, src.Platform) }) {
			continue
		}
		tag := "latest"
		if t, ok := named.(reference.Tagged); ok {
			tag = t.Tag()
		}
		img.nameTag = named.Name() + ":" + tag
		_, img.canonical = named.(reference.Canonical)
		if !img.canonical {
			tagged[img.nameTag] = true
		}
		images = append(images, img)
	}
	images = slices.DeleteFunc(images, func(i captured) bool { return i.canonical && tagged[i.nameTag] })
	slices.SortStableFunc(images, func(a, b captured) int { return strings.Compare(a.ref, b.ref) })

	var out []resource
	for _, img := range images {
		uri, err := ImagePURL(img.ref, img.src.Platform)
		if err != nil {
			return nil, err
		}
		out = append(out, resource{URI: uri, Digest: digestSet(img.src.Digest)})
	}

	var git []resource
	for _, g := range p.Git {
		r := resource{URI: redact(g.URL), Digest: map[string]string{"sha1": g.Commit}}
		if len(g.Commit) == 64 {
			r.Digest = map[string]string{"sha256": g.Commit}
		}
		git = appendURI(git, r)
	}
	var http []resource
	for _, h := range p.HTTP {
		http = appendURI(http, resource{URI: redact(h.URL), Digest: digestSet(h.Digest)})
	}
	for _, rs := range [][]resource{git, http} {
		slices.SortStableFunc(rs, func(a, b resource) int { return strings.Compare(a.URI, b.URI) })
		out = append(out, rs...)
	}
	return out, nil
}

// appendURI appends r unless a resource with its URI is already there,
// BuildKit keeping the first it captured.
func appendURI(rs []resource, r resource) []resource {
	if slices.ContainsFunc(rs, func(o resource) bool { return o.URI == r.URI }) {
		return rs
	}
	return append(rs, r)
}

// samePlatform is BuildKit's AddImage comparison, which ignores OS
// features.
func samePlatform(a, b v1.Platform) bool {
	return a.OS == b.OS && a.Architecture == b.Architecture && a.OSVersion == b.OSVersion && a.Variant == b.Variant
}

func digestSet(h v1.Hash) map[string]string {
	if h.Hex == "" {
		return nil
	}
	return map[string]string{h.Algorithm: h.Hex}
}

// vcs is buildkit_metadata.vcs: empty values dropped, the source URL
// redacted.
func vcs(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if k == "source" {
			v = redact(v)
		}
		if v != "" {
			out[k] = v
		}
	}
	return nonEmpty(out)
}

func nonEmpty(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// redact is BuildKit's urlutil.RedactCredentials: a URL's user name and
// password become "xxxxx"; a string that is not a URL is kept.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	if u.User != nil {
		user := u.User.Username()
		_, hasPassword := u.User.Password()
		switch {
		case user != "" && hasPassword:
			u.User = url.UserPassword(mask, mask)
		case user != "":
			u.User = url.User(mask)
		case hasPassword:
			u.User = url.UserPassword(user, mask)
		}
	}
	// Like BuildKit, return the re-encoded URL even when nothing was
	// redacted.
	return u.String()
}

const mask = "xxxxx"
