// Package testenv gives kiln's tests real components quickly: the real
// registry binary on a loopback port, a small busybox base image pushed into
// it, the kiln binary built once per test process, and helpers to read an
// image back as a merged file tree.
//
// It is test-support code: import it only from _test.go files. Every helper
// takes a testing.TB, reports its own failures with t.Fatalf, and registers
// its own cleanup, so callers never handle errors from it.
//
// Missing external programs (docker-registry, busybox, go) make a test skip
// on a developer machine and FAIL when the environment variable CI=true, so a
// misconfigured CI runner cannot pass by skipping everything.
package testenv
