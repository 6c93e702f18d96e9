// Package cli holds kiln's cobra commands. It parses flags into typed
// option structs, renders progress, and calls the packages that do the
// work; it contains no build logic of its own.
package cli

import (
	"github.com/spf13/cobra"
)

// Version is set at link time (-ldflags "-X ...cli.Version=v1.2.3").
var Version = "dev"

// NewRoot returns the `kiln` command with its subcommands.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "kiln",
		Short: "Build Dockerfiles into OCI images, with a cache every CI runner can reach",
		Long: "kiln builds Dockerfiles into OCI images without a daemon. Its command line\n" +
			"follows `docker buildx build`: the same flags with the same meanings.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(NewCmdBuild(), newCmdCache(), newCmdVersion())
	return root
}

func newCmdVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print kiln's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			cmd.Println("kiln " + Version)
		},
	}
}
