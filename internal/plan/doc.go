// Package plan is a build's plan as a value: for every step of every
// needed stage, its cache key when it can be known before anything runs,
// whether a store has it (and which), and for a miss the input that
// changed. The solver decides it with lookups only; this package holds and
// renders it and does no disk, network or process I/O.
package plan
