package cacheserver

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// kiln's request metrics live in Prometheus's default registry beside
// distribution's own (its storage and cache collectors register there),
// so one /metrics shows both. They count per process: a process serves
// one store.
var (
	requests = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kiln_cache_server", Name: "requests_total",
		Help: "Requests served, by API route kind, method and status code.",
	}, []string{"route", "method", "code"})
	bytesIn = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kiln_cache_server", Name: "received_bytes_total",
		Help: "Request body bytes received, by API route kind.",
	}, []string{"route"})
	bytesOut = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kiln_cache_server", Name: "sent_bytes_total",
		Help: "Response body bytes sent, by API route kind.",
	}, []string{"route"})
	lookups = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kiln_cache_server", Name: "lookups_total",
		Help: "Blob and manifest GET/HEAD requests, by kind (blob, manifest), method and result: hit (answered) or miss (404). Under an --upstream prefix a hit may have been fetched from the upstream.",
	}, []string{"kind", "method", "result"})
	evictions = promauto.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kiln_cache_server", Name: "evictions_total",
		Help: "Manifests and blobs this server removed to keep the store (a directory or a bucket) under --max-size and --max-age, manifests naming a missing blob included.",
	}, []string{"kind"})
	storeBytes = promauto.NewGauge(prometheus.GaugeOpts{
		Namespace: "kiln_cache_server", Name: "store_bytes",
		Help: "Bytes of blobs (layers, configs, manifests) in the store at the last sweep.",
	})
)

// metricsHandler serves the default registry in Prometheus's text format.
func metricsHandler() http.Handler { return promhttp.Handler() }

// observe counts one finished request.
func observe(r *http.Request, code int, in, out int64) {
	route := routeKind(r.URL.Path)
	requests.WithLabelValues(route, r.Method, strconv.Itoa(code)).Inc()
	bytesIn.WithLabelValues(route).Add(float64(in))
	bytesOut.WithLabelValues(route).Add(float64(out))
	if (route == "blob" || route == "manifest") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		// Only found and not found are answers about the cache; a refused
		// or failed request says nothing about what it holds.
		switch {
		case code < 400:
			lookups.WithLabelValues(route, r.Method, "hit").Inc()
		case code == http.StatusNotFound:
			lookups.WithLabelValues(route, r.Method, "miss").Inc()
		}
	}
}

// routeKind names the API route of path without its repository or digest,
// so the label's values stay few.
func routeKind(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "base"
	case path == "/v2/_catalog":
		return "catalog"
	case !strings.HasPrefix(path, "/v2/"):
		return "other"
	case strings.Contains(path, "/blobs/uploads/"):
		return "upload"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	case strings.Contains(path, "/referrers/"):
		return "referrers"
	}
	return "other"
}
