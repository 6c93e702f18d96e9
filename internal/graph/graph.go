// Package graph holds the stage graph of a build: which stages a target
// needs, and a scheduler that runs each stage as soon as the stages it
// depends on are done, several at once up to a limit. A cycle is a
// *CycleError that names the nodes on the loop by their labels.
package graph

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sync/errgroup"
)

// ErrCycle is returned when stages depend on each other in a loop.
var ErrCycle = errors.New("dependency cycle")

// CycleError is the ErrCycle Needed returns: the nodes on the loop, first
// node repeated at the end, with their labels.
type CycleError struct {
	Path   []int
	Labels []string // Path's labels (see Label); a node without one is its number
}

func (e *CycleError) Error() string {
	return fmt.Sprintf("%v: %s", ErrCycle, strings.Join(e.Labels, " needs "))
}

// Is makes errors.Is(err, ErrCycle) hold.
func (e *CycleError) Is(target error) bool { return target == ErrCycle }

// Graph is a directed graph over nodes 0..n-1; an edge says a node needs
// another to be built first.
type Graph struct {
	deps   [][]int
	labels []string
}

// New returns a graph of n nodes and no edges.
func New(n int) *Graph { return &Graph{deps: make([][]int, n), labels: make([]string, n)} }

// Label names node in errors (a stage's name and Dockerfile line).
func (g *Graph) Label(node int, label string) { g.labels[node] = label }

func (g *Graph) label(n int) string {
	if g.labels[n] != "" {
		return g.labels[n]
	}
	return strconv.Itoa(n)
}

// Need records that node needs dep.
func (g *Graph) Need(node, dep int) {
	if !slices.Contains(g.deps[node], dep) {
		g.deps[node] = append(g.deps[node], dep)
	}
}

// Deps returns the nodes that node needs directly.
func (g *Graph) Deps(node int) []int { return slices.Clone(g.deps[node]) }

// Needed returns, in ascending order, target and every node it needs
// transitively: the stages a build of target must run. A cycle is an error
// naming the nodes on it.
func (g *Graph) Needed(target int) ([]int, error) {
	const (
		unseen = iota
		active
		done
	)
	state := make([]int, len(g.deps))
	var out []int
	var visit func(n int, path []int) error
	visit = func(n int, path []int) error {
		switch state[n] {
		case active:
			// The loop is the part of the path from n's first visit.
			loop := append(slices.Clone(path[slices.Index(path, n):]), n)
			e := &CycleError{Path: loop}
			for _, m := range loop {
				e.Labels = append(e.Labels, g.label(m))
			}
			return e
		case done:
			return nil
		}
		state[n] = active
		for _, d := range g.deps[n] {
			if err := visit(d, append(path, n)); err != nil {
				return err
			}
		}
		state[n] = done
		out = append(out, n)
		return nil
	}
	if err := visit(target, nil); err != nil {
		return nil, err
	}
	slices.Sort(out)
	return out, nil
}

// Run calls fn for every node in nodes, each only after fn has returned
// successfully for all of its dependencies that are in nodes. At most limit
// calls run at once (limit < 1 means 1); a node waiting for its
// dependencies does not hold a slot. The first error cancels ctx for the
// others and is returned.
func (g *Graph) Run(ctx context.Context, nodes []int, limit int, fn func(ctx context.Context, node int) error) error {
	if limit < 1 {
		limit = 1
	}
	done := make(map[int]chan struct{}, len(nodes))
	for _, n := range nodes {
		done[n] = make(chan struct{})
	}
	slots := make(chan struct{}, limit)
	eg, ctx := errgroup.WithContext(ctx)
	for _, n := range nodes {
		eg.Go(func() error {
			for _, d := range g.deps[n] {
				ch, ok := done[d]
				if !ok {
					continue
				}
				select {
				case <-ch:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			err := fn(ctx, n)
			<-slots
			if err != nil {
				return err
			}
			close(done[n])
			return nil
		})
	}
	return eg.Wait()
}
