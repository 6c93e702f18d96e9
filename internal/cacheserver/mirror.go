package cacheserver

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
)

// Upstream is a registry mirrored under a repository prefix: a pull of
// PREFIX/library/alpine is served from the mirror's store, fetched from
// URL's library/alpine the first time. Mirrors are read-only.
type Upstream struct {
	Prefix string
	URL    string
}

// ParseUpstream reads PREFIX=URL.
func ParseUpstream(s string) (Upstream, error) {
	prefix, raw, ok := strings.Cut(s, "=")
	prefix = strings.Trim(prefix, "/")
	if !ok || prefix == "" {
		return Upstream{}, fmt.Errorf("upstream %q: want PREFIX=URL, e.g. docker.io=https://registry-1.docker.io", s)
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Upstream{}, fmt.Errorf("upstream %q: %q is not an http(s) URL", s, raw)
	}
	return Upstream{Prefix: prefix, URL: raw}, nil
}

// mirror is one upstream's pull-through app, its own store and bounds.
type mirror struct {
	prefix  string // "/v2/PREFIX/"
	handler http.Handler
	evictor *evictor
	app     interface{ Shutdown() error }
}

// newMirror builds distribution's proxy app for up, storing under
// mirrors/PREFIX of the server's store. Its own expiry is off: the
// server's bounds apply.
func newMirror(ctx context.Context, cfg Config, up Upstream) (*mirror, error) {
	dcfg, err := distributionConfig(cfg, path.Join("mirrors", up.Prefix))
	if err != nil {
		return nil, err
	}
	if a, ok := dcfg.Auth[accessControllerName]; ok {
		a["repoprefix"] = up.Prefix + "/"
	}
	never := time.Duration(0)
	dcfg.Proxy = configuration.Proxy{RemoteURL: up.URL, TTL: &never}
	app, err := newApp(ctx, dcfg)
	if err != nil {
		return nil, fmt.Errorf("mirror %s: %w", up.Prefix, err)
	}
	m := &mirror{prefix: "/v2/" + up.Prefix + "/", handler: app, app: app}
	if cfg.MaxSize > 0 || cfg.MaxAge > 0 {
		driver, err := factory.Create(ctx, dcfg.Storage.Type(), dcfg.Storage.Parameters())
		if err != nil {
			return nil, fmt.Errorf("mirror %s: %w", up.Prefix, err)
		}
		if m.evictor, err = newEvictor(ctx, driver, cfg, true, cfg.Log); err != nil {
			return nil, err
		}
		m.handler = m.evictor.track(app)
	}
	return m, nil
}

// route sends requests under a mirror's prefix to it, without the prefix.
func route(mirrors []*mirror, next http.Handler) http.Handler {
	if len(mirrors) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, m := range mirrors {
			if rest, ok := strings.CutPrefix(r.URL.Path, m.prefix); ok {
				r2 := r.Clone(r.Context())
				r2.URL.Path = "/v2/" + rest
				r2.URL.RawPath = ""
				m.handler.ServeHTTP(w, r2)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
