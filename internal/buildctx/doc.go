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
// Files also returns a Snapshot of each hashed entry's lstat identity (type,
// size, inode, device, mtime, ctime); COPY checks every object it copies
// against it (Check, then Missing), so a file that changed, appeared or
// disappeared after its key was computed fails the step instead of caching a
// layer under a key that does not describe it.
//
// kiln's own paths (its state directory, output and local cache
// destinations, temporary build directories) are hidden with Hide: when
// they lie inside the context they are invisible to COPY, globs and digests
// alike, whatever .dockerignore says, so a build never reads what it writes.
package buildctx
