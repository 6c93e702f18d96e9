//go:build !race

package snapshot

// slowdown is how much longer timed tests may take under the race
// detector; without it, 1.
const slowdown = 1
