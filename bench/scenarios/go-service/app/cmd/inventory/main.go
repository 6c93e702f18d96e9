// Command inventory loads a CSV of items, prices them and prints a report.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"

	"example.com/inventory/internal/model"
	"example.com/inventory/internal/pricing"
	"example.com/inventory/internal/report"
	"example.com/inventory/internal/store"
)

// version is changed by the benchmark's "one .go file changed" case.
const version = "1.0.0"

func load(r io.Reader, st *store.Store) error {
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Split(text, ",")
		if len(f) < 4 {
			return fmt.Errorf("line %d: want sku,name,qty,cents[,tags...]", line)
		}
		qty, err := strconv.Atoi(f[2])
		if err != nil {
			return fmt.Errorf("line %d: quantity: %w", line, err)
		}
		cents, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			return fmt.Errorf("line %d: price: %w", line, err)
		}
		it, err := model.NewItem(f[0], f[1], qty, cents, f[4:]...)
		if err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
		st.Put(it)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read items: %w", err)
	}
	return nil
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	fs := pflag.NewFlagSet("inventory", pflag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	sale := fs.Int("sale", 10, "percent off items tagged 'sale'")
	limit := fs.Int("parallel", 4, "pricing requests in flight")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(stdout, "inventory", version)
		return nil
	}
	st := store.New()
	if err := load(stdin, st); err != nil {
		return err
	}
	items := st.All()
	quotes, err := pricing.Apply(ctx, items, []pricing.Rule{{Tag: "sale", Percent: *sale}, {Tag: "clearance", Percent: 50}}, *limit)
	if err != nil {
		return err
	}
	if *asJSON {
		return report.JSON(stdout, items, quotes)
	}
	return report.Text(stdout, items, quotes)
}

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "inventory:", err)
		os.Exit(1)
	}
}
