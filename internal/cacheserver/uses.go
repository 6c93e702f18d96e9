package cacheserver

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"time"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// usesRoot holds one use record per server in the store itself, beside
// distribution's layout: what each server saw used and when. Servers on
// one bucket read each other's records, so a read through one keeps an
// image alive against the sweeps of all, and a server that restarts keeps
// its history. The records are the only state kiln adds to the store; a
// record is replaced whole by its writer and never written by another.
const usesRoot = "/_kiln/uses"

// useRecord is one server's record: a use key (see manifestKey; a blob's
// digest) to its last use, in Unix milliseconds of the writer's clock.
type useRecord struct {
	Uses map[string]int64 `json:"uses"`
}

func usePath(server string) string { return path.Join(usesRoot, server) }

// writeUses replaces this server's record.
func writeUses(ctx context.Context, d storagedriver.StorageDriver, server string, uses map[string]time.Time) error {
	rec := useRecord{Uses: make(map[string]int64, len(uses))}
	for k, t := range uses {
		rec.Uses[k] = t.UnixMilli()
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := d.PutContent(ctx, usePath(server), b); err != nil {
		return fmt.Errorf("write use record: %w", err)
	}
	return nil
}

// otherUses is every other server's record. A record its writer has not
// replaced for longer than stale is from a server that is gone (one that
// runs replaces its record every flush interval): it is returned in dead,
// for the caller to take in and remove. A record that does not parse (a
// local file cut short by a crash) is dead and empty.
func otherUses(ctx context.Context, d storagedriver.StorageDriver, self string, stale time.Duration) (live, dead map[string]map[string]time.Time, err error) {
	live, dead = map[string]map[string]time.Time{}, map[string]map[string]time.Time{}
	var infos []storagedriver.FileInfo
	err = d.Walk(ctx, usesRoot, func(fi storagedriver.FileInfo) error {
		if !fi.IsDir() && path.Base(fi.Path()) != self {
			infos = append(infos, fi)
		}
		return nil
	})
	if err != nil && !notFound(err) {
		return nil, nil, fmt.Errorf("list use records: %w", err)
	}
	now := time.Now()
	for _, fi := range infos {
		server := path.Base(fi.Path())
		b, err := d.GetContent(ctx, fi.Path())
		if notFound(err) {
			continue // taken in by another sweep meanwhile
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read use record %s: %w", server, err)
		}
		uses := map[string]time.Time{}
		var rec useRecord
		if json.Unmarshal(b, &rec) == nil {
			for k, ms := range rec.Uses {
				uses[k] = time.UnixMilli(ms)
			}
		}
		if rec.Uses == nil || now.Sub(fi.ModTime()) > stale {
			dead[server] = uses
		} else {
			live[server] = uses
		}
	}
	return live, dead, nil
}

// removeUses removes a dead server's record.
func removeUses(ctx context.Context, d storagedriver.StorageDriver, server string) error {
	if err := d.Delete(ctx, usePath(server)); err != nil && !notFound(err) {
		return fmt.Errorf("remove use record %s: %w", server, err)
	}
	return nil
}
