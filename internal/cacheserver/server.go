package cacheserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/sirupsen/logrus"

	// The access controller distribution finds by name in its
	// configuration.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
)

// Config is what `kiln cache serve` was asked to do.
type Config struct {
	// Addr is the "host:port" to listen on.
	Addr string
	// Root is the directory that holds the store, unless S3 is set.
	Root string
	// S3, when set, is the bucket that holds the store instead of Root.
	S3 *S3
	// Htpasswd, when set, is an htpasswd file (bcrypt) of the users who
	// may use the server; every request must then authenticate.
	Htpasswd string
	// ReadOnly names Htpasswd users who may pull but not push or delete.
	ReadOnly []string
	// Access limits Htpasswd users to the repositories under the prefixes
	// given (see ParseAccess); users not named keep every repository.
	Access map[string][]RepoAccess
	// InsecureNoAuth allows a non-loopback Addr without Htpasswd.
	InsecureNoAuth bool
	// TLSCert and TLSKey, when both set, serve HTTPS.
	TLSCert, TLSKey string
	// MaxSize, when positive, bounds the bytes of blobs in the store;
	// MaxAge, when positive, removes images unused for longer. Least
	// recently used images go first (see evictor). Servers that share
	// a bucket should all have the same bounds: a server without them
	// does not record what it serves.
	MaxSize int64
	MaxAge  time.Duration
	// EvictGrace is how long after its last use nothing may be evicted.
	EvictGrace time.Duration
	// EvictInterval is the time between eviction sweeps.
	EvictInterval time.Duration
	// UploadSecret signs the state of upload sessions; servers behind one
	// load balancer share it so that an upload begun on one can go on on
	// another. Empty: a random secret of this server's own.
	UploadSecret string
	// Upstreams are registries mirrored read-only under their prefixes.
	Upstreams []Upstream
	// ShutdownTimeout bounds how long a shutdown waits for in-flight
	// requests (uploads above all) to finish.
	ShutdownTimeout time.Duration
	// Log receives the access log and the server's own messages; nil
	// discards them.
	Log *slog.Logger
}

// Server is a running cache server's handler and store.
type Server struct {
	cfg     Config
	log     *slog.Logger
	app     *handlers.App
	driver  storagedriver.StorageDriver
	evictor *evictor // nil without bounds
	mirrors []*mirror
	handler http.Handler
}

// minUploadSecret is the shortest upload secret accepted: 128 bits of
// hex, so a guessable one cannot let a client forge another's upload state.
const minUploadSecret = 32

// DefaultShutdownTimeout is how long a shutdown waits for in-flight
// requests when Config.ShutdownTimeout is zero: long enough for a large
// layer upload on a slow link to complete.
const DefaultShutdownTimeout = 2 * time.Minute

// DefaultEvictGrace keeps what was just used for longer than any one
// build's push or pull takes between its manifest and its blobs.
const DefaultEvictGrace = 10 * time.Minute

// DefaultEvictInterval is the time between eviction sweeps: each lists
// the store, so not much more often.
const DefaultEvictInterval = time.Minute

// New checks cfg and builds the server's handler over its store; it does
// not listen yet.
func New(ctx context.Context, cfg Config) (*Server, error) {
	switch {
	case cfg.S3 != nil && cfg.Root != "":
		return nil, errors.New("cache server: a store in S3 (--storage) or in a directory (--root), not both")
	case cfg.S3 == nil && cfg.Root == "":
		return nil, errors.New("cache server: no store directory (--root) or bucket (--storage)")
	case cfg.S3 != nil:
		if err := applyCABundle(); err != nil {
			return nil, fmt.Errorf("cache server: %w", err)
		}
	default:
		root, err := filepath.Abs(cfg.Root)
		if err != nil {
			return nil, fmt.Errorf("cache server: store directory: %w", err)
		}
		if err := os.MkdirAll(root, 0o755); err != nil {
			return nil, fmt.Errorf("cache server: store directory: %w", err)
		}
		cfg.Root = root
	}
	if lo, err := loopback(cfg.Addr); err != nil {
		return nil, err
	} else if !lo && cfg.Htpasswd == "" && !cfg.InsecureNoAuth {
		return nil, ErrExposed
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("cache server: --tls-cert and --tls-key go together")
	}
	// distribution creates a missing htpasswd file with a generated user;
	// a typo in the path must fail instead, as must one in a user's name.
	if err := checkUsers(cfg); err != nil {
		return nil, err
	}
	if cfg.UploadSecret != "" && len(cfg.UploadSecret) < minUploadSecret {
		return nil, fmt.Errorf("cache server: the upload secret is shorter than %d bytes", minUploadSecret)
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.EvictGrace == 0 {
		cfg.EvictGrace = DefaultEvictGrace
	}
	if cfg.EvictInterval == 0 {
		cfg.EvictInterval = DefaultEvictInterval
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Log = log
	quietDistribution()

	dcfg, err := distributionConfig(cfg, "")
	if err != nil {
		return nil, err
	}
	driver, err := factory.Create(ctx, dcfg.Storage.Type(), dcfg.Storage.Parameters())
	if err != nil {
		return nil, fmt.Errorf("cache server: open store %s: %w", cfg.storeName(), err)
	}
	if err := probe(ctx, driver); err != nil {
		return nil, fmt.Errorf("cache server: store %s unreachable: %w", cfg.storeName(), err)
	}
	app, err := newApp(ctx, dcfg)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, app: app, driver: driver}
	var api http.Handler = app
	if cfg.MaxSize > 0 || cfg.MaxAge > 0 {
		if s.evictor, err = newEvictor(ctx, driver, cfg, false, log); err != nil {
			return nil, err
		}
		api = s.evictor.track(app)
	}
	if len(cfg.Access) > 0 {
		if api, err = newFilteredCatalog(ctx, api, driver, dcfg.Auth[accessControllerName], cfg.Access); err != nil {
			return nil, err
		}
	}
	for _, up := range cfg.Upstreams {
		m, err := newMirror(ctx, cfg, up)
		if err != nil {
			return nil, err
		}
		s.mirrors = append(s.mirrors, m)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.health)
	mux.Handle("GET /metrics", metricsHandler())
	mux.Handle("/", route(s.mirrors, api))
	s.handler = accessLog(log, mux)
	return s, nil
}

// newApp is handlers.NewApp, which reports a bad configuration by panicking.
func newApp(ctx context.Context, dcfg *configuration.Configuration) (app *handlers.App, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cache server: %v", r)
		}
	}()
	return handlers.NewApp(ctx, dcfg), nil
}

// distributionConfig is cfg in distribution's terms: the store under sub
// (see storageConfig), with stale upload sessions purged, as the registry
// does by default.
func distributionConfig(cfg Config, sub string) (*configuration.Configuration, error) {
	secret := cfg.UploadSecret
	if secret == "" {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("cache server: upload secret: %w", err)
		}
		secret = hex.EncodeToString(b)
	}
	dcfg := &configuration.Configuration{Storage: storageConfig(cfg, sub)}
	// Images with non-distributable layers (Windows bases) name their
	// layers' URLs; a mirror must accept them as the registry they came
	// from did.
	dcfg.Validation.Manifests.URLs.Allow = []string{"^https?://"}
	// distribution's YAML loader defaults this to 1000; built as a
	// struct, it is 0, and the catalog answers every request empty.
	dcfg.Catalog.MaxEntries = 1000
	dcfg.HTTP.Secret = secret
	if cfg.Htpasswd != "" {
		dcfg.Auth = configuration.Auth{accessControllerName: configuration.Parameters{
			"realm": "kiln", "path": cfg.Htpasswd, "readonly": cfg.ReadOnly, "access": cfg.Access,
		}}
	}
	return dcfg, nil
}

// quietDistribution keeps distribution's own per-request logging (through
// logrus's standard logger) to warnings: the access log is this package's.
func quietDistribution() {
	logrus.SetLevel(logrus.WarnLevel)
	logrus.SetFormatter(&logrus.JSONFormatter{})
	logrus.SetOutput(os.Stderr)
}

// Handler serves the registry API, /healthz and /metrics, and logs
// every request.
func (s *Server) Handler() http.Handler { return s.handler }

// health answers 200 when the store can be read.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	_, err := s.driver.Stat(ctx, "/")
	var nf storagedriver.PathNotFoundError
	if err != nil && !errors.As(err, &nf) {
		s.log.Error("health check", "err", err)
		http.Error(w, "store unavailable", http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "ok\n")
}

// Listen opens the configured address.
func (s *Server) Listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("cache server: %w", err)
	}
	return ln, nil
}

// Serve serves on ln until ctx is cancelled, then stops accepting, lets
// in-flight requests finish (up to the shutdown timeout) and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	scheme := "http"
	if s.cfg.TLSCert != "" {
		scheme = "https"
	}
	errc := make(chan error, 1)
	go func() {
		var err error
		if scheme == "https" {
			err = srv.ServeTLS(ln, s.cfg.TLSCert, s.cfg.TLSKey)
		} else {
			err = srv.Serve(ln)
		}
		errc <- err
	}()
	ectx, stopEvicting := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopEvicting()
	evictors := []*evictor{s.evictor}
	for _, m := range s.mirrors {
		evictors = append(evictors, m.evictor)
		defer m.app.Shutdown()
	}
	for _, e := range evictors {
		if e != nil {
			wg.Go(func() { e.run(ectx, s.cfg.EvictInterval) })
		}
	}
	s.log.Info("listening", "addr", ln.Addr().String(), "scheme", scheme, "store", s.cfg.storeName(), "auth", s.cfg.Htpasswd != "")
	select {
	case err := <-errc:
		s.app.Shutdown()
		return fmt.Errorf("cache server: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down: finishing in-flight requests", "timeout", s.cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	s.app.Shutdown()
	if err != nil {
		return fmt.Errorf("cache server: shutdown: %w", err)
	}
	s.log.Info("stopped")
	return nil
}
