// Package report renders the inventory as text or JSON.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"example.com/inventory/internal/model"
	"example.com/inventory/internal/pricing"
)

// Summary is the totals line of a report.
type Summary struct {
	Items int   `json:"items"`
	Units int   `json:"units"`
	Value int64 `json:"value_cents"`
}

// Summarize totals the items.
func Summarize(items []model.Item) Summary {
	var s Summary
	for _, it := range items {
		s.Items++
		s.Units += it.Quantity
		s.Value += it.Value()
	}
	return s
}

// Text writes a table of items with their quoted prices.
func Text(w io.Writer, items []model.Item, quotes []pricing.Quote) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SKU\tNAME\tQTY\tPRICE\tQUOTE")
	for i, it := range items {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", it.SKU, it.Name, it.Quantity, money(it.Cents), money(quotes[i].Cents))
	}
	s := Summarize(items)
	fmt.Fprintf(tw, "total\t%d items\t%d\t%s\t\n", s.Items, s.Units, money(s.Value))
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// JSON writes the items and the summary as one JSON document.
func JSON(w io.Writer, items []model.Item, quotes []pricing.Quote) error {
	doc := struct {
		Items   []model.Item    `json:"items"`
		Quotes  []pricing.Quote `json:"quotes"`
		Summary Summary         `json:"summary"`
	}{items, quotes, Summarize(items)}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	return nil
}

func money(cents int64) string { return fmt.Sprintf("%d.%02d", cents/100, cents%100) }
