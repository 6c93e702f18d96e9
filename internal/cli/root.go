// Package cli holds kiln's cobra commands. It parses flags into typed
// option structs, renders progress, and calls the packages that do the
// work; it contains no build logic of its own.
package cli

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/internal/state"
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
		// Every command first cleans up after kiln commands that died
		// (kill -9, OOM, power loss): see internal/state.
		PersistentPreRun: func(cmd *cobra.Command, _ []string) { sweep(cmd) },
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
			info, _ := debug.ReadBuildInfo()
			fmt.Fprintln(cmd.OutOrStdout(), versionLine(Version, info))
		},
	}
}

// versionLine is `kiln VERSION (commit C, DATE[, modified])`. VERSION is
// the link-time Version, else the module version `go install ...@v1.2.3`
// recorded, else dev; the commit and date are what the go command
// recorded from the checkout it built.
func versionLine(version string, info *debug.BuildInfo) string {
	if info == nil {
		return "kiln " + version
	}
	if version == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		version = info.Main.Version
	}
	vcs := map[string]string{}
	for _, s := range info.Settings {
		vcs[s.Key] = s.Value
	}
	rev := vcs["vcs.revision"]
	if rev == "" {
		return "kiln " + version
	}
	var parts []string
	parts = append(parts, "commit "+rev)
	if t := vcs["vcs.time"]; t != "" {
		parts = append(parts, t)
	}
	if vcs["vcs.modified"] == "true" {
		parts = append(parts, "modified")
	}
	return fmt.Sprintf("kiln %s (%s)", version, strings.Join(parts, ", "))
}

// sweep removes what dead kiln commands left in kiln's directory. It never
// fails a command: a leftover it cannot remove is a warning, and the next
// command tries again.
func sweep(cmd *cobra.Command) {
	dir, err := cacheDir()
	if err != nil {
		return // the commands that need the directory report it
	}
	if _, err := state.Sweep(cmd.Context(), dir); err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "WARNING: cleaning up after an earlier kiln: %v\n", err)
	}
}
