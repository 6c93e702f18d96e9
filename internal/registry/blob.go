package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Blob starts a GET of the blob d names and returns its body unverified:
// the caller checks the digest. ggcr's remote.Layer hashes every blob it
// reads, so a caller that checks the digest itself (over a download
// resumed after a broken connection, which ggcr's check cannot cover)
// would hash each byte twice, which on a restore of many packs is a
// seventh of its CPU.
func Blob(ctx context.Context, d name.Digest, o Options) (io.ReadCloser, error) {
	kc := o.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	repo := d.Context()
	auth, err := authn.Resolve(ctx, kc, repo)
	if err != nil {
		return nil, fmt.Errorf("%s: resolving credentials: %w", repo, err)
	}
	t := transport.NewRetry(o.transport(),
		transport.WithRetryBackoff(transport.Backoff(retryBackoff)),
		transport.WithRetryStatusCodes(retryStatusCodes...))
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, t, []string{repo.Scope(transport.PullScope)})
	if err != nil {
		return nil, err
	}
	u := fmt.Sprintf("%s://%s/v2/%s/blobs/%s", repo.Scheme(), repo.RegistryStr(), repo.RepositoryStr(), d.DigestStr())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return nil, err
	}
	if err := transport.CheckError(resp, http.StatusOK); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return resp.Body, nil
}
