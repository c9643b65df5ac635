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
// another cluster slot than the device). The index update is idempotent and
// every device write re-asserts the device's current entries, so an index
// left behind by a crash between the two is repaired by the device's next
// write; listings re-check each device against the query anyway.
//
//	<prefix>{idx}:s:<status>     sorted set (lex) of ids with that job status
//	<prefix>{idx}:b:<bundle>     sorted set (lex) of ids running that bundle
//	<prefix>{idx}:l:<key>=<val>  sorted set (lex) of ids with that label
//	<prefix>{idx}:statuses       set of statuses in use
//	<prefix>{idx}:bundles        set of bundles in use
//	<prefix>{idx}:st, {idx}:bd   hashes: id -> the status and bundle indexed
//	<prefix>{idx}:seen           sorted set of ids by last-seen (unix ms; 0 never)
//
// The {idx} hash tag puts them in one cluster slot, so that one device's
// index update is one script even in Redis Cluster.

func (s *Store) statusKey(v string) string { return s.prefix + "{idx}:s:" + v }
func (s *Store) bundleKey(v string) string { return s.prefix + "{idx}:b:" + v }
func (s *Store) labelKey(k, v string) string {
	return s.prefix + "{idx}:l:" + k + "=" + v
}
func (s *Store) seenKey() string     { return s.prefix + "{idx}:seen" }
func (s *Store) statusesKey() string { return s.prefix + "{idx}:statuses" }
func (s *Store) bundlesKey() string  { return s.prefix + "{idx}:bundles" }

// reindexScript moves one device's entries to its current status, bundle
// and last-seen time atomically: the device's
// current entries are kept in {idx}:st and {idx}:bd, so concurrent writes
// of one device cannot leave it in two sets.
// KEYS: statuses hash, bundles hash, status-values set, bundle-values set,
// seen zset. ARGV: id, status, bundle, seen (ms), (unused), prefix.
var reindexScript = goredis.NewScript(`
local id, status, bundle, seen, channel, p = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local old = redis.call('HGET', KEYS[1], id)
if old ~= status then
  if old then redis.call('ZREM', p .. '{idx}:s:' .. old, id) end
  redis.call('HSET', KEYS[1], id, status)
end
redis.call('ZADD', p .. '{idx}:s:' .. status, 0, id)
redis.call('SADD', KEYS[3], status)
old = redis.call('HGET', KEYS[2], id)
if old ~= bundle then
  if old then redis.call('ZREM', p .. '{idx}:b:' .. old, id) end
  redis.call('HSET', KEYS[2], id, bundle)
end
redis.call('ZADD', p .. '{idx}:b:' .. bundle, 0, id)
redis.call('SADD', KEYS[4], bundle)
redis.call('ZADD', KEYS[5], 'GT', seen, id)
return 1
`)

// reindex moves device cur's index entries to its current state and
// announces the change to the device's holder (store.Changes). Labels are indexed when the device
// is created (withLabels); they do not change afterwards.
func (s *Store) reindex(ctx context.Context, cur *store.Device, withLabels bool) error {
	var seen int64
	if !cur.Reported.LastSeen.IsZero() {
		seen = cur.Reported.LastSeen.UnixMilli()
	}
	keys := []string{s.prefix + "{idx}:st", s.prefix + "{idx}:bd", s.statusesKey(), s.bundlesKey(), s.seenKey()}
	err := reindexScript.Run(ctx, s.rdb, keys, cur.ID, cur.JobStatus(), cur.BundleKey(), seen, "", s.prefix).Err()
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	s.announce(ctx, cur.ID)
	if withLabels && len(cur.Labels) > 0 {
		_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
			for k, v := range cur.Labels {
				p.ZAdd(ctx, s.labelKey(k, v), goredis.Z{Member: cur.ID})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("index labels: %w", err)
		}
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
				cmds[i] = p.HMGet(ctx, s.deviceKey(id), "meta", "d", "r", "ls")
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		for _, c := range cmds {
			d, err := decodeValues(c.Val()[:3])
			if errors.Is(err, store.ErrNotFound) {
				continue // indexed, but its create never landed
			}
			if err != nil {
				return nil, fmt.Errorf("list devices: %w", err)
			}
			overlaySeen(&d, c.Val()[3])
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
