// Package solver is the solver: it ties the frontend, the stage graph, the
// build context, file operations, layers and outputs together for one
// build. Options come in typed from the CLI; a Result and the outputs come
// out. It never prints: progress goes to the Sink in Options.
package solver
