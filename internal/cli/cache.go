package cli

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-build/kiln/internal/cache"
	"github.com/kiln-build/kiln/internal/gc"
	"github.com/kiln-build/kiln/internal/solver"
)

// newCmdCache returns `kiln cache` with ls, du and prune, which look after
// everything kiln keeps in its directory.
func newCmdCache() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Inspect and trim what kiln keeps on disk",
	}
	cmd.AddCommand(newCmdCacheLs(), newCmdCacheDu(), newCmdCachePrune(), newCmdCacheServe())
	return cmd
}

func openLocalCache() (*cache.Local, error) {
	dir, err := cacheDir()
	if err != nil {
		return nil, err
	}
	return cache.OpenLocal(filepath.Join(dir, "cache"))
}

func kilnDisk() (solver.Disk, error) {
	dir, err := cacheDir()
	return solver.Disk{Root: dir}, err
}

// usageLine says what kiln's directory holds, per kind.
func usageLine(u gc.Usage) string {
	parts := make([]string, 0, len(gc.Kinds))
	for _, k := range gc.Kinds {
		parts = append(parts, fmt.Sprintf("%s %s", k, sizeString(u.Kinds[k])))
	}
	return fmt.Sprintf("%s on disk (%s)", sizeString(u.Total), strings.Join(parts, ", "))
}

func newCmdCacheLs() *cobra.Command {
	return &cobra.Command{
		Use:   "ls",
		Short: "List cache entries, most recently used first, and what kiln's directory holds",
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
			disk, err := kilnDisk()
			if err != nil {
				return err
			}
			u, err := disk.Usage(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "KEY\tSIZE\tLAST USED\tSTEP")
			for _, e := range entries {
				step := e.Record.StepID
				if i := strings.LastIndex(step, "|"); i >= 0 {
					step = step[i+1:]
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", short(e.Record.Key.Encoded()), sizeString(e.Size),
					e.Record.LastUsed.Local().Format(time.DateTime), step)
			}
			// The total is the whole directory, not the sum of the entries:
			// images, extracted layers and cache mounts take disk too.
			fmt.Fprintf(w, "total: %d entries, %s\n", len(entries), usageLine(u))
			return w.Flush()
		},
	}
}

func newCmdCacheDu() *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "du",
		Short: "Show how much disk kiln's directory uses, per kind",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			disk, err := kilnDisk()
			if err != nil {
				return err
			}
			u, err := disk.Usage(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch format {
			case "json":
				kinds := map[string]int64{}
				for _, k := range gc.Kinds {
					kinds[string(k)] = u.Kinds[k]
				}
				return json.NewEncoder(out).Encode(map[string]any{"root": disk.Root, "total": u.Total, "kinds": kinds})
			case "", "text":
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "KIND\tSIZE")
				for _, k := range gc.Kinds {
					fmt.Fprintf(w, "%s\t%s\n", k, sizeString(u.Kinds[k]))
				}
				fmt.Fprintf(w, "total\t%s\t%s\n", sizeString(u.Total), disk.Root)
				return w.Flush()
			}
			return fmt.Errorf("--format=%s: must be text or json", format)
		},
	}
	cmd.Flags().StringVar(&format, "format", "text", `Output format: "text" or "json" (bytes)`)
	return cmd
}

func newCmdCachePrune() *cobra.Command {
	var keep time.Duration
	var maxSize, keepStorage string
	var filters []string
	var all bool
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Remove what builds no longer use: by age, then least recently used until kiln's directory fits",
		Long: "Remove what kiln keeps (cache records and blobs, local images, extracted layers, cache mounts),\n" +
			"least recently used first, never anything a running build uses. Without flags only\n" +
			"superseded extracted layers and debris go.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := gc.Policy{All: all, Until: keep, Superseded: true}
			for _, f := range filters {
				k, v, _ := strings.Cut(f, "=")
				if k != "until" {
					return fmt.Errorf("--filter %s: only until=DURATION is supported", f)
				}
				d, err := parseAge(v)
				if err != nil {
					return fmt.Errorf("--filter %s: %w", f, err)
				}
				p.Until = d
			}
			for _, s := range []struct{ flag, v string }{{"--max-size", maxSize}, {"--keep-storage", keepStorage}} {
				limit, err := parseSize(s.v)
				if err != nil {
					return fmt.Errorf("%s=%s: %w", s.flag, s.v, err)
				}
				if limit > 0 && (p.MaxSize == 0 || limit < p.MaxSize) {
					p.MaxSize = limit
				}
			}
			disk, err := kilnDisk()
			if err != nil {
				return err
			}
			res, err := disk.Collect(cmd.Context(), p)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d items, freed %s; %s left", res.Removed, sizeString(res.Freed), sizeString(res.After))
			if res.InUse > 0 {
				fmt.Fprintf(cmd.OutOrStdout(), " (%d in use by running builds kept)", res.InUse)
			}
			fmt.Fprintln(cmd.OutOrStdout())
			return nil
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "Remove everything no running build uses")
	cmd.Flags().StringArrayVar(&filters, "filter", nil, `Remove what was unused for longer than a duration ("until=24h")`)
	cmd.Flags().DurationVar(&keep, "keep-duration", 0, "Keep what was used within this long (e.g. 72h); 0 keeps all by age")
	cmd.Flags().StringVar(&keepStorage, "keep-storage", "", "Trim the least recently used until kiln's directory is at most this big (e.g. 10GB)")
	cmd.Flags().StringVar(&maxSize, "max-size", "", "Same as --keep-storage")
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
		return fmt.Sprintf("%.2fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
