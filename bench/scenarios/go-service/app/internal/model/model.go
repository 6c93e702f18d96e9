// Package model holds the inventory's domain types.
package model

import (
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Item is one stock-keeping unit.
type Item struct {
	ID       uuid.UUID `json:"id"`
	SKU      string    `json:"sku"`
	Name     string    `json:"name"`
	Quantity int       `json:"quantity"`
	Cents    int64     `json:"cents"`
	Tags     []string  `json:"tags,omitempty"`
	Updated  time.Time `json:"updated"`
}

// NewItem validates its input and gives the item a fresh id.
func NewItem(sku, name string, qty int, cents int64, tags ...string) (Item, error) {
	sku = strings.TrimSpace(strings.ToUpper(sku))
	if sku == "" {
		return Item{}, fmt.Errorf("item %q: empty SKU", name)
	}
	if qty < 0 {
		return Item{}, fmt.Errorf("item %s: negative quantity %d", sku, qty)
	}
	if cents < 0 {
		return Item{}, fmt.Errorf("item %s: negative price %d", sku, cents)
	}
	return Item{
		ID:       uuid.NewSHA1(uuid.NameSpaceOID, []byte(sku)),
		SKU:      sku,
		Name:     name,
		Quantity: qty,
		Cents:    cents,
		Tags:     tags,
	}, nil
}

// Value is the stock value of the item in cents.
func (it Item) Value() int64 { return int64(it.Quantity) * it.Cents }

// HasTag reports whether the item carries tag.
func (it Item) HasTag(tag string) bool {
	for _, t := range it.Tags {
		if strings.EqualFold(t, tag) {
			return true
		}
	}
	return false
}
