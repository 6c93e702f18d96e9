package cli

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/internal/cache"
)

// newCmdCache returns `kiln cache` with ls and prune, which look after
// kiln's local build cache.
func newCmdCache() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Inspect and trim kiln's local build cache",
	}
	cmd.AddCommand(newCmdCacheLs(), newCmdCachePrune())
	return cmd
}

func openLocalCache() (*cache.Local, error) {
	dir, err := cacheDir()
	if err != nil {
		return nil, err
	}
	return cache.OpenLocal(filepath.Join(dir, "cache"))
}

func newCmdCacheLs() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List cache entries, most recently used first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			local, err := openLocalCache()
			if err != nil {
				return err
			}
			entries, err := local.List(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "KEY\tSIZE\tLAST USED\tSTEP")
			var total int64
			for _, e := range entries {
				total += e.Size
				step := e.Record.StepID
				if i := strings.LastIndex(step, "|"); i >= 0 {
					step = step[i+1:]
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", short(e.Record.Key.Encoded()), sizeString(e.Size),
					e.Record.LastUsed.Local().Format(time.DateTime), step)
			}
			fmt.Fprintf(w, "total: %d entries, %s\n", len(entries), sizeString(total))
			return w.Flush()
		},
	}
}

func newCmdCachePrune() *cobra.Command {
	var keep time.Duration
	var maxSize string
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove cache entries unused for a while, then the least recently used until the cache fits",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			limit, err := parseSize(maxSize)
			if err != nil {
				return fmt.Errorf("--max-size=%s: %w", maxSize, err)
			}
			local, err := openLocalCache()
			if err != nil {
				return err
			}
			n, freed, err := local.Prune(cmd.Context(), keep, limit)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d entries, freed %s\n", n, sizeString(freed))
			return nil
		},
	}
	cmd.Flags().DurationVar(&keep, "keep-duration", 0, "Keep entries used within this long (e.g. 72h); 0 keeps all by age")
	cmd.Flags().StringVar(&maxSize, "max-size", "", "Trim the least recently used entries until the cache is at most this big (e.g. 10GB, 512MB)")
	return cmd
}

func short(hex string) string {
	if len(hex) > 12 {
		return hex[:12]
	}
	return hex
}

// parseSize reads sizes such as 512MB, 10GB, 1.5GiB or a plain byte count.
func parseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
	}
	for _, u := range units {
		if num, ok := strings.CutSuffix(strings.ToUpper(s), strings.ToUpper(u.suffix)); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil || f < 0 {
				return 0, fmt.Errorf("not a size")
			}
			return int64(f * u.mult), nil
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("not a size (try 512MB or 10GB)")
	}
	return n, nil
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
