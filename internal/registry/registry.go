package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// DefaultJobs is the number of concurrent blob uploads when Options.Jobs is 0.
const DefaultJobs = 4

// Options say how kiln talks to registries. The zero value uses the docker
// keychain, ggcr's default transport and DefaultJobs uploads.
type Options struct {
	// Insecure lists HOST[:PORT] values named by --insecure-registry. They
	// speak plain HTTP, and TLS to them is not verified. A HOST without a
	// port matches every port of that host.
	Insecure []string
	// Keychain resolves credentials; nil means authn.DefaultKeychain
	// (docker config.json and credential helpers).
	Keychain authn.Keychain
	// Transport carries every request; nil means remote.DefaultTransport.
	// Tests wrap it to count requests and bytes.
	Transport http.RoundTripper
	// Wrap, when set, decorates the final transport (after TLS routing for
	// Insecure hosts), e.g. to count the bytes a build downloads.
	Wrap func(http.RoundTripper) http.RoundTripper
	// Jobs bounds concurrent blob uploads; 0 means DefaultJobs.
	Jobs int
}

// retryBackoff retries transient failures three times over about four
// seconds: long enough to ride out a registry restart or a load balancer
// hiccup, short enough that a dead registry fails a CI job quickly.
var retryBackoff = remote.Backoff{
	Duration: time.Second,
	Factor:   3,
	Jitter:   0.1,
	Steps:    3,
}

// retryStatusCodes are the HTTP statuses worth repeating a request for.
var retryStatusCodes = []int{
	http.StatusRequestTimeout,
	http.StatusTooManyRequests,
	http.StatusInternalServerError,
	http.StatusBadGateway,
	http.StatusServiceUnavailable,
	http.StatusGatewayTimeout,
}

// Reference parses an image reference. Loopback registries (localhost,
// 127.0.0.0/8, [::1], any port) and the Insecure hosts are marked
// name.Insecure so they are reached over plain HTTP, as docker does.
func (o Options) Reference(s string) (name.Reference, error) {
	ref, err := name.ParseReference(s)
	if err != nil {
		return nil, fmt.Errorf("parsing image reference %q: %w", s, err)
	}
	if !o.isInsecure(ref.Context().RegistryStr()) {
		return ref, nil
	}
	ref, err = name.ParseReference(s, name.Insecure)
	if err != nil {
		return nil, fmt.Errorf("parsing image reference %q: %w", s, err)
	}
	return ref, nil
}

// isInsecure reports whether host (HOST[:PORT] as in a reference) must be
// spoken to over plain HTTP or unverified TLS.
func (o Options) isInsecure(host string) bool {
	h := hostOnly(host)
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
		return true
	}
	for _, in := range o.Insecure {
		in = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(in, "http://"), "https://"), "/")
		if _, _, err := net.SplitHostPort(in); err == nil {
			if strings.EqualFold(in, host) {
				return true
			}
			continue
		}
		// A bare host names every port on it.
		if strings.EqualFold(hostOnly(in), h) {
			return true
		}
	}
	return false
}

// hostOnly strips the port and IPv6 brackets from HOST[:PORT].
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}

// RemoteOptions returns the remote options for one operation: ctx, keychain
// auth, the transport (TLS unverified towards Insecure hosts), retries on
// transient errors, and the upload concurrency.
func (o Options) RemoteOptions(ctx context.Context) []remote.Option {
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	jobs := o.Jobs
	if jobs <= 0 {
		jobs = DefaultJobs
	}
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(kc),
		remote.WithTransport(o.transport()),
		remote.WithRetryBackoff(retryBackoff),
		remote.WithRetryStatusCodes(retryStatusCodes...),
		remote.WithJobs(jobs),
	}
}

// transport returns the caller's transport, or the default one, routed so
// that TLS towards Insecure hosts is not verified (docker's
// --insecure-registry accepts self-signed certificates as well as HTTP).
func (o Options) transport() http.RoundTripper {
	t := o.routedTransport()
	if o.Wrap != nil {
		t = o.Wrap(t)
	}
	return t
}

func (o Options) routedTransport() http.RoundTripper {
	base := o.Transport
	if base == nil {
		base = remote.DefaultTransport
	}
	if len(o.Insecure) == 0 {
		return base
	}
	t, ok := base.(*http.Transport)
	if !ok {
		// A caller-supplied wrapper: we cannot reach its TLS settings.
		return base
	}
	insecure := t.Clone()
	if insecure.TLSClientConfig == nil {
		insecure.TLSClientConfig = &tls.Config{}
	}
	insecure.TLSClientConfig.InsecureSkipVerify = true //nolint:gosec // --insecure-registry asks for exactly this
	return &hostRouter{opts: o, secure: base, insecure: insecure}
}

// hostRouter sends requests for insecure hosts through a transport that
// skips TLS verification and all others through the verifying one.
type hostRouter struct {
	opts     Options
	secure   http.RoundTripper
	insecure http.RoundTripper
}

func (r *hostRouter) RoundTrip(req *http.Request) (*http.Response, error) {
	if r.opts.isInsecure(req.URL.Host) {
		return r.insecure.RoundTrip(req)
	}
	return r.secure.RoundTrip(req)
}

// Sentinel error classes. Match them with errors.Is.
var (
	// ErrUnreachable: the registry host could not be connected to.
	ErrUnreachable = errors.New("registry unreachable")
	// ErrNotFound: the repository, tag, digest or platform does not exist.
	ErrNotFound = errors.New("image not found")
	// ErrCorrupt: a manifest or index the registry served is not valid
	// (a malformed digest, a negative size).
	ErrCorrupt = errors.New("corrupt manifest")
)
