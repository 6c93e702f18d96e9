// Package cachekey computes the keys kiln caches build steps under.
//
// A key is the sha256 of a normalized, versioned description of everything
// a step's result depends on: the chain it runs on (Chain: the stage's base
// and the diffID of every layer below the step — the parent's *result*,
// never the parent's key), what the step does
// (the instruction after ARG/ENV expansion) and the digests of its inputs
// (base image manifest, context file contents, the environment a RUN sees,
// mount specs). It never depends on file modification times, and never on
// a secret's value — only on its id.
//
// Because keys cover results, two builds that produced different bytes for
// one step can never share the records of the steps after it, and a step
// rebuilt with the same bytes as before is followed by hits. A hit's record
// carries its layer's diffID, so the next key is known without a download.
//
// What a result depends on (the Inputs) is kept separate from how it is
// produced, and the Inputs are stored beside each cache record, so a later
// miss can be explained by naming the input that changed. A step that
// reads more than 2,000 context files records one digest for them all and
// a "note:" index of 8 bytes a file (never hashed into the key), from
// which Explain, given today's file list, still names the changed files.
//
// Keys live forever once shipped: the golden tests in this package pin the
// key of every kind of step, and Version must change whenever the
// normalization does.
package cachekey
