package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// Fleet indexes, written after the device's compare-and-set (they live in
// other cluster slots than the device). Every write is idempotent and each
// device write re-asserts the device's current entries, so an index left
// behind by a crash between the two is repaired by the device's next write.
//
//	<prefix>{idx}:s:<status>     sorted set (lex) of ids with that job status
//	<prefix>{idx}:b:<bundle>     sorted set (lex) of ids running that bundle
//	<prefix>{idx}:l:<key>=<val>  sorted set (lex) of ids with that label
//	<prefix>{idx}:statuses       set of statuses in use
//	<prefix>{idx}:bundles        set of bundles in use
//	<prefix>{idx}:seen           sorted set of ids by last-seen (unix ms; 0 never)
//
// The {idx} hash tag puts them in one cluster slot, so that one device's
// index update is one MULTI/EXEC transaction even in Redis Cluster.

func (s *Store) statusKey(v string) string { return s.prefix + "{idx}:s:" + v }
func (s *Store) bundleKey(v string) string { return s.prefix + "{idx}:b:" + v }
func (s *Store) labelKey(k, v string) string {
	return s.prefix + "{idx}:l:" + k + "=" + v
}
func (s *Store) seenKey() string     { return s.prefix + "{idx}:seen" }
func (s *Store) statusesKey() string { return s.prefix + "{idx}:statuses" }
func (s *Store) bundlesKey() string  { return s.prefix + "{idx}:bundles" }

// statuses are every job status a device can have.
var statuses = []string{store.StatusNone, "QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "ROLLED_BACK", "REJECTED", "CANCELED", "TIMED_OUT"}

// reindex moves device cur's entries from old (nil: none known). The status
// entry is removed from every other status, so two writes of one device
// racing each other leave it in one status set; a bundle entry is moved
// from the old bundle only.
func (s *Store) reindex(ctx context.Context, old, cur *store.Device) error {
	_, err := s.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		status, bundle := cur.JobStatus(), cur.BundleKey()
		for _, st := range statuses {
			if st != status {
				p.ZRem(ctx, s.statusKey(st), cur.ID)
			}
		}
		if old != nil {
			if was := old.BundleKey(); was != bundle {
				p.ZRem(ctx, s.bundleKey(was), cur.ID)
			}
		}
		p.ZAdd(ctx, s.statusKey(status), goredis.Z{Member: cur.ID})
		p.ZAdd(ctx, s.bundleKey(bundle), goredis.Z{Member: cur.ID})
		p.SAdd(ctx, s.statusesKey(), status)
		p.SAdd(ctx, s.bundlesKey(), bundle)
		for k, v := range cur.Labels {
			p.ZAdd(ctx, s.labelKey(k, v), goredis.Z{Member: cur.ID})
		}
		var seen float64
		if !cur.Reported.LastSeen.IsZero() {
			seen = float64(cur.Reported.LastSeen.UnixMilli())
		}
		p.ZAddGT(ctx, s.seenKey(), goredis.Z{Member: cur.ID, Score: seen})
		p.Publish(ctx, s.changesKey(), cur.ID) // store.Changes: every write is announced
		return nil
	})
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	return nil
}

// ListDevices implements store.Devices.
func (s *Store) ListDevices(ctx context.Context, opts store.ListOptions) ([]store.Device, error) {
	if opts.Limit <= 0 {
		return nil, fmt.Errorf("list devices: limit %d must be positive", opts.Limit)
	}
	q := opts.Query
	key := s.indexKey()
	switch {
	case q.Status != "":
		key = s.statusKey(q.Status)
	case q.Bundle != "":
		key = s.bundleKey(q.Bundle)
	case len(q.Labels) > 0:
		keys := make([]string, 0, len(q.Labels))
		for k := range q.Labels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		key = s.labelKey(keys[0], q.Labels[keys[0]])
	}
	min := "-"
	if opts.After != "" {
		min = "(" + opts.After
	}
	var out []store.Device
	for len(out) < opts.Limit {
		ids, err := s.rdb.ZRangeArgs(ctx, goredis.ZRangeArgs{
			Key: key, Start: min, Stop: "+", ByLex: true, Count: int64(opts.Limit - len(out)),
		}).Result()
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		if len(ids) == 0 {
			break
		}
		cmds := make([]*goredis.SliceCmd, len(ids))
		_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HMGet(ctx, s.deviceKey(id), "meta", "d", "r")
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		for _, c := range cmds {
			d, err := decodeValues(c.Val())
			if errors.Is(err, store.ErrNotFound) {
				continue // indexed, but its create never landed
			}
			if err != nil {
				return nil, fmt.Errorf("list devices: %w", err)
			}
			if q.Match(d) { // also drops stale index entries
				out = append(out, d)
			}
		}
		min = "(" + ids[len(ids)-1]
	}
	return out, nil
}

// Summary implements store.Devices from index cardinalities: a few
// round trips whatever the fleet's size.
func (s *Store) Summary(ctx context.Context, silentBefore time.Time) (store.Summary, error) {
	statuses, err := s.rdb.SMembers(ctx, s.statusesKey()).Result()
	if err != nil {
		return store.Summary{}, fmt.Errorf("summary: %w", err)
	}
	bundles, err := s.rdb.SMembers(ctx, s.bundlesKey()).Result()
	if err != nil {
		return store.Summary{}, fmt.Errorf("summary: %w", err)
	}
	var total, silent *goredis.IntCmd
	perStatus := make([]*goredis.IntCmd, len(statuses))
	perBundle := make([]*goredis.IntCmd, len(bundles))
	_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		total = p.ZCard(ctx, s.indexKey())
		silent = p.ZCount(ctx, s.seenKey(), "-inf", fmt.Sprintf("(%d", silentBefore.UnixMilli()))
		for i, v := range statuses {
			perStatus[i] = p.ZCard(ctx, s.statusKey(v))
		}
		for i, v := range bundles {
			perBundle[i] = p.ZCard(ctx, s.bundleKey(v))
		}
		return nil
	})
	if err != nil {
		return store.Summary{}, fmt.Errorf("summary: %w", err)
	}
	sum := store.Summary{Total: uint64(total.Val()), Silent: uint64(silent.Val()),
		PerStatus: map[string]uint64{}, PerBundle: map[string]uint64{}}
	for i, v := range statuses {
		if n := perStatus[i].Val(); n > 0 {
			sum.PerStatus[v] = uint64(n)
		}
	}
	for i, v := range bundles {
		if n := perBundle[i].Val(); n > 0 {
			sum.PerBundle[v] = uint64(n)
		}
	}
	return sum, nil
}
