//go:build race

package snapshot

// slowdown is how much longer timed tests may take under the race
// detector, which slows syscall-heavy and allocation-heavy code ~10x.
const slowdown = 8
