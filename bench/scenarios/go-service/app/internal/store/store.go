// Package store keeps items in memory, sharded by a hash of the SKU so that
// concurrent writers rarely contend.
package store

import (
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/cespare/xxhash/v2"

	"example.com/inventory/internal/model"
)

// ErrNotFound is returned for an unknown SKU.
var ErrNotFound = errors.New("item not found")

const shards = 16

type shard struct {
	mu    sync.RWMutex
	items map[string]model.Item
}

// Store is a sharded in-memory item store.
type Store struct {
	shards [shards]shard
}

// New returns an empty store.
func New() *Store {
	s := &Store{}
	for i := range s.shards {
		s.shards[i].items = make(map[string]model.Item)
	}
	return s
}

func (s *Store) shardFor(sku string) *shard {
	return &s.shards[xxhash.Sum64String(sku)%shards]
}

// Put inserts or replaces an item.
func (s *Store) Put(it model.Item) {
	sh := s.shardFor(it.SKU)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.items[it.SKU] = it
}

// Get returns the item with the given SKU.
func (s *Store) Get(sku string) (model.Item, error) {
	sh := s.shardFor(sku)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	it, ok := sh.items[sku]
	if !ok {
		return model.Item{}, fmt.Errorf("get %s: %w", sku, ErrNotFound)
	}
	return it, nil
}

// Adjust changes an item's quantity by delta, refusing to go below zero.
func (s *Store) Adjust(sku string, delta int) (model.Item, error) {
	sh := s.shardFor(sku)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	it, ok := sh.items[sku]
	if !ok {
		return model.Item{}, fmt.Errorf("adjust %s: %w", sku, ErrNotFound)
	}
	if it.Quantity+delta < 0 {
		return model.Item{}, fmt.Errorf("adjust %s by %d: only %d in stock", sku, delta, it.Quantity)
	}
	it.Quantity += delta
	sh.items[sku] = it
	return it, nil
}

// All returns every item sorted by SKU.
func (s *Store) All() []model.Item {
	var out []model.Item
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, it := range sh.items {
			out = append(out, it)
		}
		sh.mu.RUnlock()
	}
	sort.Slice(out, func(a, b int) bool { return out[a].SKU < out[b].SKU })
	return out
}
