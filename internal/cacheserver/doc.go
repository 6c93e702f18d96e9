// Package cacheserver is `kiln cache serve`: an OCI registry made to sit
// next to CI runners and hold their build caches.
//
// The registry itself is CNCF distribution's (its HTTP handlers, its
// filesystem and S3 storage drivers, htpasswd auth), never one of kiln's
// own; this package adds what a build cache server needs around it: a
// store in a directory or an S3 bucket (storage.go), a refusal to serve a
// non-loopback address without auth, read-only users and per-repository
// prefixes (with a catalog filtered to them), size and age bounds
// (evict.go, reading distribution's layout in layout.go, shared between
// the servers of one bucket through use records in uses.go), pull-through mirrors (mirror.go), a health endpoint,
// Prometheus metrics with cache hits and misses, structured access logs
// and a shutdown that lets in-flight uploads finish.
//
// It depends on nothing else of kiln's, so it builds and runs on a machine
// that has no executor.
package cacheserver
