// Command kiln builds Dockerfiles into OCI images without a daemon.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kiln-build/kiln/internal/cli"
	"github.com/kiln-build/kiln/internal/executor"
)

func main() {
	// First: when kiln re-executed itself as the chroot executor's child,
	// this runs the child and never returns.
	executor.Init()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.NewRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ERROR:", err)
		os.Exit(1)
	}
}
