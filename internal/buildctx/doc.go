// Package buildctx loads a build context directory and applies its
// .dockerignore rules with Docker's exact semantics (moby/patternmatcher).
//
// A Context answers two questions for the rest of kiln: "is this path part of
// the context?" (Excluded, used by COPY and ADD as the visibility filter) and
// "what is the content digest of what this COPY selects?" (Digest, used as a
// cache-key input). Digests cover path, mode, owner, symlink target and bytes
// of each file and never mtimes, so a fresh checkout of the same tree on a new
// CI runner yields the same digest.
//
// kiln's own paths (its state directory, output and local cache
// destinations, temporary build directories) are hidden with Hide: when
// they lie inside the context they are invisible to COPY, globs and digests
// alike, whatever .dockerignore says, so a build never reads what it writes.
package buildctx
