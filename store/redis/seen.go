package redis

import (
	"context"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// Marked last-seen times (store.Devices.MarkSeen) are kept in the device
// hash's "ls" field (unix ms), apart from the versioned documents, and in
// the last-seen index. Reads use the latest of "ls" and the reported
// document's LastSeen.

// markSeenScript raises a device's marked last-seen time to ARGV[1] (ms)
// if the device exists and the time is later; it returns 1 if the device
// exists. KEYS: device hash.
var markSeenScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local cur = tonumber(redis.call('HGET', KEYS[1], 'ls') or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('HSET', KEYS[1], 'ls', ARGV[1])
end
return 1
`)

// MarkSeen implements store.Devices: one pipeline of per-device scripts
// (EVAL: a pipeline cannot fall back from EVALSHA),
// then one of last-seen index updates for the devices that exist.
func (s *Store) MarkSeen(ctx context.Context, seen []store.Seen) error {
	if len(seen) == 0 {
		return nil
	}
	latest := make(map[string]int64, len(seen))
	for _, e := range seen {
		if ms := e.At.UnixMilli(); ms > latest[e.ID] {
			latest[e.ID] = ms
		}
	}
	ids := make([]string, 0, len(latest))
	cmds := make([]*goredis.Cmd, 0, len(latest))
	_, err := s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for id, ms := range latest {
			ids = append(ids, id)
			cmds = append(cmds, markSeenScript.Eval(ctx, p, []string{s.deviceKey(id)}, ms))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark seen: %w", err)
	}
	_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, id := range ids {
			if n, _ := cmds[i].Int64(); n == 1 {
				p.ZAddGT(ctx, s.seenKey(), goredis.Z{Score: float64(latest[id]), Member: id})
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark seen: index: %w", err)
	}
	return nil
}

// overlaySeen makes d's LastSeen the latest of its own and the marked time
// v (an HMGET value of "ls").
func overlaySeen(d *store.Device, v any) {
	raw, ok := v.(string)
	if !ok {
		return
	}
	ms, err := strconv.ParseInt(raw, 10, 64)
	if err != nil {
		return
	}
	if t := time.UnixMilli(ms).UTC(); t.After(d.Reported.LastSeen) {
		d.Reported.LastSeen = t
	}
}
