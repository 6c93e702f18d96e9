package cacheserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"

	// The storage drivers distribution finds by name in its configuration.
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/s3-aws"
)

// S3 is a bucket of AWS S3 or of any S3-compatible store (MinIO, Ceph RGW,
// SeaweedFS) that holds the store instead of a local directory. Several
// servers may share one: each sees the others' writes.
type S3 struct {
	Bucket string
	// Prefix is the key prefix of the store in the bucket, without
	// leading or trailing slashes; empty is the bucket's root.
	Prefix string
	// Endpoint is the "http(s)://host[:port]" of a store that is not AWS;
	// empty means AWS, found from Region.
	Endpoint string
	Region   string
}

// bucketName is what S3 and its imitators accept as a bucket name.
var bucketName = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$`)

// defaultRegion signs requests to a non-AWS endpoint when no region is
// set: MinIO, Ceph and SeaweedFS accept it unless configured otherwise.
const defaultRegion = "us-east-1"

// ParseS3 reads --storage s3://BUCKET[/PREFIX], and the endpoint and region
// from the variables the AWS tools read (getenv is os.Getenv): the endpoint
// from AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL; the region from
// AWS_REGION, else AWS_DEFAULT_REGION. Credentials are not read here: the
// AWS SDK finds them itself (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
// AWS_SESSION_TOKEN, the shared credentials file, an instance role).
func ParseS3(storage string, getenv func(string) string) (*S3, error) {
	u, err := url.Parse(storage)
	if err != nil || u.Scheme != "s3" || u.Opaque != "" {
		return nil, fmt.Errorf("storage %q: want s3://BUCKET[/PREFIX] (a local directory is --root)", storage)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return nil, fmt.Errorf("storage %q: want s3://BUCKET[/PREFIX], nothing else: the endpoint comes from AWS_ENDPOINT_URL, credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", storage)
	}
	if !bucketName.MatchString(u.Host) || strings.Contains(u.Host, "..") {
		return nil, fmt.Errorf("storage %q: %q is not a bucket name (3 to 63 of a-z, 0-9, '.' and '-')", storage, u.Host)
	}
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" && (path.Clean(prefix) != prefix || strings.HasPrefix(prefix, "..")) {
		return nil, fmt.Errorf("storage %q: prefix %q is not a clean path", storage, prefix)
	}
	s := &S3{Bucket: u.Host, Prefix: prefix}
	s.Endpoint = getenv("AWS_ENDPOINT_URL_S3")
	if s.Endpoint == "" {
		s.Endpoint = getenv("AWS_ENDPOINT_URL")
	}
	if s.Endpoint != "" {
		e, err := url.Parse(s.Endpoint)
		if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" || strings.Trim(e.Path, "/") != "" {
			return nil, fmt.Errorf("S3 endpoint %q (AWS_ENDPOINT_URL): want http(s)://HOST[:PORT]", s.Endpoint)
		}
	}
	s.Region = getenv("AWS_REGION")
	if s.Region == "" {
		s.Region = getenv("AWS_DEFAULT_REGION")
	}
	if s.Region == "" {
		if s.Endpoint == "" {
			return nil, fmt.Errorf("storage %q: set AWS_REGION to the bucket's region, or AWS_ENDPOINT_URL to a store that is not AWS", storage)
		}
		s.Region = defaultRegion
	}
	return s, nil
}

// String is the store as --storage names it.
func (s *S3) String() string {
	return strings.TrimSuffix("s3://"+s.Bucket+"/"+s.Prefix, "/")
}

// awsEndpoint says whether the endpoint is AWS's own, which addresses
// buckets by host name; every other store is addressed by path, since its
// DNS rarely has a name per bucket.
func (s *S3) awsEndpoint() bool {
	if s.Endpoint == "" {
		return true
	}
	u, _ := url.Parse(s.Endpoint)
	return strings.HasSuffix(u.Hostname(), ".amazonaws.com")
}

// storageConfig is distribution's storage section for the store, or for
// the part of it under sub ("mirrors/PREFIX"): deletes on (eviction and
// `crane delete` need them), and blobs served through the server rather
// than by a redirect to the bucket, which runners may not reach and whose
// traffic the server would neither count nor authorize.
func storageConfig(cfg Config, sub string) configuration.Storage {
	st := configuration.Storage{
		"delete":   configuration.Parameters{"enabled": true},
		"redirect": configuration.Parameters{"disable": true},
	}
	if cfg.S3 == nil {
		st["filesystem"] = configuration.Parameters{"rootdirectory": filepath.Join(cfg.Root, filepath.FromSlash(sub))}
		return st
	}
	p := configuration.Parameters{
		"bucket":         cfg.S3.Bucket,
		"region":         cfg.S3.Region,
		"rootdirectory":  "/" + path.Join(cfg.S3.Prefix, sub),
		"forcepathstyle": !cfg.S3.awsEndpoint(),
	}
	if cfg.S3.Endpoint != "" {
		p["regionendpoint"] = cfg.S3.Endpoint
		p["secure"] = strings.HasPrefix(cfg.S3.Endpoint, "https://")
	}
	st["s3"] = p
	return st
}

// storeName is the store as a log line names it.
func (cfg Config) storeName() string {
	if cfg.S3 != nil {
		return cfg.S3.String()
	}
	return cfg.Root
}

// probeTimeout bounds the start-up check of the store: the AWS SDK retries
// an unreachable endpoint a few times before it gives up.
const probeTimeout = 30 * time.Second

// probe reads the store's root once, so a wrong endpoint, bucket or
// credentials fail at start-up rather than on a runner's first push.
func probe(ctx context.Context, d storagedriver.StorageDriver) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err := d.Stat(ctx, "/")
	var nf storagedriver.PathNotFoundError
	if err != nil && !errors.As(err, &nf) { // an empty store is fine
		return err
	}
	return nil
}

// caBundle applies AWS_CA_BUNDLE once per process, for every S3 session.
// The AWS SDK (v1, which distribution's driver uses) applies it itself on
// every new session by writing http.DefaultClient's transport and that
// transport's TLS roots in place: with two drivers in one process (the
// server's and distribution's own, a mirror's, a second server in a test)
// that write races with requests the first driver has in flight. So the
// bundle is applied here, before the first session, with the SDK's meaning
// (the bundle's certificates are the only roots), and the variable is
// cleared so that no session applies it again.
var caBundle struct {
	once sync.Once
	err  error
}

func applyCABundle() error {
	caBundle.once.Do(func() {
		file := os.Getenv("AWS_CA_BUNDLE")
		if file == "" {
			return
		}
		pem, err := os.ReadFile(file)
		if err != nil {
			caBundle.err = fmt.Errorf("AWS_CA_BUNDLE: %w", err)
			return
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			caBundle.err = fmt.Errorf("AWS_CA_BUNDLE %s: no PEM certificates", file)
			return
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{RootCAs: roots}
		http.DefaultClient.Transport = t
		caBundle.err = os.Unsetenv("AWS_CA_BUNDLE")
	})
	return caBundle.err
}
