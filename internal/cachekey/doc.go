// Package cachekey computes the keys kiln caches build steps under.
//
// A key is the sha256 of a normalized, versioned description of everything
// a step's result depends on: its parent step's key, what the step does
// (the instruction after ARG/ENV expansion) and the digests of its inputs
// (base image manifest, context file contents, the environment a RUN sees,
// mount specs). It never depends on file modification times, and never on
// a secret's value — only on its id.
//
// What a result depends on (the Inputs) is kept separate from how it is
// produced, and the Inputs are stored beside each cache record, so a later
// miss can be explained by naming the input that changed.
//
// Keys live forever once shipped: the golden tests in this package pin the
// key of every kind of step, and Version must change whenever the
// normalization does.
package cachekey
