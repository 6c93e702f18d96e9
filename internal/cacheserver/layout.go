package cacheserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/opencontainers/go-digest"
)

// Where distribution's storage layout keeps blobs and repositories. The
// evictor reads the layout with one walk of each, rather than through
// distribution's enumerators, which read every link and stat every blob
// one request at a time: on S3 a walk is one LIST per thousand keys.
const (
	blobsRoot = "/docker/registry/v2/blobs"
	reposRoot = "/docker/registry/v2/repositories"
)

// blobDataPath is where distribution's storage layout keeps a blob's bytes.
func blobDataPath(d digest.Digest) string {
	return path.Join(blobsRoot, d.Algorithm().String(), d.Encoded()[:2], d.Encoded(), "data")
}

// blobInfo is a blob's size and write time.
type blobInfo struct {
	size  int64
	mtime time.Time
}

// listBlobs is every blob in the store.
func listBlobs(ctx context.Context, d storagedriver.StorageDriver) (map[digest.Digest]blobInfo, error) {
	out := map[digest.Digest]blobInfo{}
	err := d.Walk(ctx, blobsRoot, func(fi storagedriver.FileInfo) error {
		if fi.IsDir() || path.Base(fi.Path()) != "data" {
			return nil
		}
		// .../blobs/<algorithm>/<2 hex>/<hex>/data
		dir := path.Dir(fi.Path())
		dg := digest.NewDigestFromEncoded(digest.Algorithm(path.Base(path.Dir(path.Dir(dir)))), path.Base(dir))
		if dg.Validate() == nil {
			out[dg] = blobInfo{size: fi.Size(), mtime: fi.ModTime()}
		}
		return nil
	})
	if err != nil && !notFound(err) { // none yet: an empty store
		return nil, fmt.Errorf("list blobs: %w", err)
	}
	return out, nil
}

// repoLinks is what one repository's manifests directory holds: its
// revisions (every manifest pushed to it, by digest, with the link's write
// time) and the current link of each tag.
type repoLinks struct {
	revisions map[digest.Digest]time.Time
	tags      map[string]storagedriver.FileInfo // tag -> its current/link
}

// listRepos walks every repository's manifest links.
func listRepos(ctx context.Context, d storagedriver.StorageDriver) (map[string]*repoLinks, error) {
	out := map[string]*repoLinks{}
	repo := func(name string) *repoLinks {
		r := out[name]
		if r == nil {
			r = &repoLinks{revisions: map[digest.Digest]time.Time{}, tags: map[string]storagedriver.FileInfo{}}
			out[name] = r
		}
		return r
	}
	err := d.Walk(ctx, reposRoot, func(fi storagedriver.FileInfo) error {
		p := strings.TrimPrefix(fi.Path(), reposRoot+"/")
		if fi.IsDir() {
			// Layer links and upload sessions say nothing about images.
			if b := path.Base(p); b == "_layers" || b == "_uploads" {
				return storagedriver.ErrSkipDir
			}
			return nil
		}
		name, rest, ok := strings.Cut(p, "/_manifests/")
		if !ok || path.Base(rest) != "link" {
			return nil
		}
		parts := strings.Split(rest, "/")
		switch {
		// revisions/<algorithm>/<hex>/link
		case len(parts) == 4 && parts[0] == "revisions":
			dg := digest.NewDigestFromEncoded(digest.Algorithm(parts[1]), parts[2])
			if dg.Validate() == nil {
				repo(name).revisions[dg] = fi.ModTime()
			}
		// tags/<tag>/current/link
		case len(parts) == 4 && parts[0] == "tags" && parts[2] == "current":
			repo(name).tags[parts[1]] = fi
		}
		return nil
	})
	if err != nil && !notFound(err) {
		return nil, fmt.Errorf("list repositories: %w", err)
	}
	return out, nil
}

// readLink reads a link file: the digest it names.
func readLink(ctx context.Context, d storagedriver.StorageDriver, p string) (digest.Digest, error) {
	b, err := d.GetContent(ctx, p)
	if err != nil {
		return "", err
	}
	return digest.Parse(strings.TrimSpace(string(b)))
}

// manifestRefs is what a manifest names, as distribution's References does:
// an image's config and layers, an index's manifests.
type manifestRefs struct {
	refs []digest.Digest
	// foreign are the references the store need not hold: layers with
	// URLs (non-distributable), which distribution accepts unpushed.
	foreign map[digest.Digest]bool
}

// maxManifestBytes is distribution's own limit on a manifest's size.
const maxManifestBytes = 4 << 20

// readManifest reads the manifest stored as blob dg.
func readManifest(ctx context.Context, d storagedriver.StorageDriver, dg digest.Digest) (manifestRefs, error) {
	fi, err := d.Stat(ctx, blobDataPath(dg))
	if err != nil {
		return manifestRefs{}, err
	}
	if fi.Size() > maxManifestBytes {
		return manifestRefs{}, fmt.Errorf("manifest %s: %d bytes, more than a manifest may be", dg, fi.Size())
	}
	b, err := d.GetContent(ctx, blobDataPath(dg))
	if err != nil {
		return manifestRefs{}, err
	}
	type desc struct {
		Digest digest.Digest `json:"digest"`
		URLs   []string      `json:"urls"`
	}
	var m struct {
		Config    *desc  `json:"config"`
		Layers    []desc `json:"layers"`
		Manifests []desc `json:"manifests"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return manifestRefs{}, fmt.Errorf("manifest %s: %w", dg, err)
	}
	var out manifestRefs
	all := m.Manifests
	if m.Config != nil {
		all = append(all, *m.Config)
	}
	all = append(all, m.Layers...)
	for _, r := range all {
		if r.Digest.Validate() != nil {
			continue
		}
		out.refs = append(out.refs, r.Digest)
		if len(r.URLs) > 0 {
			if out.foreign == nil {
				out.foreign = map[digest.Digest]bool{}
			}
			out.foreign[r.Digest] = true
		}
	}
	return out, nil
}

func notFound(err error) bool {
	var nf storagedriver.PathNotFoundError
	return errors.As(err, &nf)
}
