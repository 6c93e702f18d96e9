// Package registry wraps go-containerregistry for kiln: it parses image
// references with docker's plain-HTTP rules (loopback hosts and
// --insecure-registry hosts), builds remote options with keychain auth and
// retries, fetches image manifests without touching layers, and pushes an
// image under several tags so that a failed push tags nothing.
//
// Errors are classified: errors.Is(err, ErrUnreachable) when the registry
// cannot be reached at all, errors.Is(err, ErrNotFound) when the repository,
// tag or platform does not exist, errors.Is(err, ErrCorrupt) when a manifest
// or index names a malformed digest or a negative size (the error names the
// image, the manifest's digest and the bad entry). Other registry errors (authentication,
// denied, invalid) keep the registry's own diagnostic text and remain
// reachable with errors.As(err, **transport.Error).
package registry
