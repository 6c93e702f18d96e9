// Package dockerfile turns Dockerfile text into stages and typed
// instructions, using BuildKit's own parser and instruction packages so that
// syntax (heredocs, --mount, --chmod, escapes) matches `docker build`
// exactly. It also carries the pieces of BuildKit's ARG/ENV semantics the
// solver needs: ordered variable scopes, word expansion, global ARGs for FROM.
//
// The package does no disk, network or process I/O: callers hand it bytes.
// Every error it returns for a problem in the Dockerfile is an *Error that
// names the file and line.
package dockerfile
