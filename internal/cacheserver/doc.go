// Package cacheserver is `kiln cache serve`: an OCI registry made to sit
// next to CI runners and hold their build caches.
//
// The registry itself is CNCF distribution's (its HTTP handlers, its
// filesystem and S3 storage drivers, htpasswd auth), never one of kiln's
// own; this package adds what a build cache server needs around it: a
// refusal to serve a non-loopback address without auth, a health endpoint,
// structured access logs and a shutdown that lets in-flight uploads finish.
//
// It depends on nothing else of kiln's, so it builds and runs on a machine
// that has no executor.
package cacheserver
