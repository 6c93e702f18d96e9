// Package pricing computes discounted prices for a batch of items
// concurrently, the way a real service fans out to a pricing backend.
package pricing

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"

	"example.com/inventory/internal/model"
)

// Rule discounts items that carry Tag by Percent.
type Rule struct {
	Tag     string
	Percent int
}

// Quote is an item's price after rules.
type Quote struct {
	SKU   string
	Cents int64
}

// Apply prices every item under the rules, with at most limit in flight.
func Apply(ctx context.Context, items []model.Item, rules []Rule, limit int) ([]Quote, error) {
	for _, r := range rules {
		if r.Percent < 0 || r.Percent > 100 {
			return nil, fmt.Errorf("rule %q: percent %d out of range", r.Tag, r.Percent)
		}
	}
	quotes := make([]Quote, len(items))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(limit)
	for i, it := range items {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			quotes[i] = Quote{SKU: it.SKU, Cents: price(it, rules)}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("pricing: %w", err)
	}
	return quotes, nil
}

// price applies the largest matching discount; discounts never stack.
func price(it model.Item, rules []Rule) int64 {
	best := 0
	for _, r := range rules {
		if it.HasTag(r.Tag) && r.Percent > best {
			best = r.Percent
		}
	}
	return it.Cents * int64(100-best) / 100
}
