package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// Rollout keys (see the package comment) all carry the {rollouts} hash tag,
// so that a fenced write checks the lease and writes the rollout in one
// script on one cluster slot.

var (
	_ store.Rollouts = (*Store)(nil)
	_ store.Leases   = (*Store)(nil)
)

func (s *Store) rolloutDocsKey() string           { return s.prefix + "{rollouts}:docs" }
func (s *Store) rolloutIDsKey() string            { return s.prefix + "{rollouts}:ids" }
func (s *Store) executionsKey(id string) string   { return s.prefix + "{rollouts}:exec:" + id }
func (s *Store) leaseKey(name string) string      { return s.prefix + "{rollouts}:lease:" + name }
func (s *Store) leaseFenceKey(name string) string { return s.prefix + "{rollouts}:fence:" + name }

// fenceCheck is the Lua preamble of fenced scripts: with a non-zero token
// ARGV[1], the lease hash KEYS[1] must exist (it expires with the lease)
// and hold that token.
const fenceCheck = `
if ARGV[1] ~= '0' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[1] then
  return {'fenced'}
end
`

// createRolloutScript stores rollout ARGV[1] (JSON ARGV[2]) unless one
// exists, and returns the stored document. An identical stored document is
// a repeat of this create and succeeds.
// KEYS: documents hash, ids sorted set.
var createRolloutScript = goredis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  if cur == ARGV[2] then return {'ok', cur} end
  return {'exists', cur}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return {'ok', ARGV[2]}
`)

// updateRolloutScript replaces rollout ARGV[2] by ARGV[4] if its version is
// still ARGV[3], after the fence check. A stored document identical to
// ARGV[4] is a repeat of a write that already landed.
// KEYS: lease hash, documents hash. ARGV: fence, id, expect, document.
var updateRolloutScript = goredis.NewScript(fenceCheck + `
local cur = redis.call('HGET', KEYS[2], ARGV[2])
if not cur then return {'missing'} end
if cur == ARGV[4] then return {'ok', cur} end
if cjson.decode(cur)['version'] ~= tonumber(ARGV[3]) then return {'conflict', cur} end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
return {'ok', ARGV[4]}
`)

// putExecutionsScript stores the device/execution pairs ARGV[3:] of rollout
// ARGV[2], after the fence check, in chunks that stay below Lua's limit on
// unpacked arguments.
// KEYS: lease hash, documents hash, executions hash. ARGV: fence, id, pairs.
var putExecutionsScript = goredis.NewScript(fenceCheck + `
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return {'missing'} end
local chunk = 1000
for i = 3, #ARGV, chunk do
  redis.call('HSET', KEYS[3], unpack(ARGV, i, math.min(i + chunk - 1, #ARGV)))
end
return {'ok'}
`)

// CreateRollout implements store.Rollouts. Repeating a create that already
// succeeded (the stored document is still that version 1, byte for byte)
// succeeds without writing.
func (s *Store) CreateRollout(ctx context.Context, r store.Rollout) (store.Rollout, error) {
	if r.ID == "" {
		return store.Rollout{}, errors.New("create rollout: empty id")
	}
	r.Version = 1
	raw, err := json.Marshal(r)
	if err != nil {
		return store.Rollout{}, fmt.Errorf("create rollout %q: %w", r.ID, err)
	}
	res, err := createRolloutScript.Run(ctx, s.rdb, []string{s.rolloutDocsKey(), s.rolloutIDsKey()}, r.ID, raw).StringSlice()
	if err != nil {
		return store.Rollout{}, fmt.Errorf("create rollout %q: %w", r.ID, err)
	}
	stored, err := decodeRollout(res[1])
	if err != nil {
		return store.Rollout{}, fmt.Errorf("create rollout %q: %w", r.ID, err)
	}
	if res[0] == "exists" {
		return stored, fmt.Errorf("create rollout %q: %w", r.ID, store.ErrExists)
	}
	return stored, nil
}

// GetRollout implements store.Rollouts.
func (s *Store) GetRollout(ctx context.Context, id string) (store.Rollout, error) {
	raw, err := s.rdb.HGet(ctx, s.rolloutDocsKey(), id).Result()
	if errors.Is(err, goredis.Nil) {
		return store.Rollout{}, fmt.Errorf("get rollout %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Rollout{}, fmt.Errorf("get rollout %q: %w", id, err)
	}
	r, err := decodeRollout(raw)
	if err != nil {
		return store.Rollout{}, fmt.Errorf("get rollout %q: %w", id, err)
	}
	return r, nil
}

// ListRollouts implements store.Rollouts. limit must be positive.
func (s *Store) ListRollouts(ctx context.Context, before string, limit int) ([]store.Rollout, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("list rollouts: limit %d must be positive", limit)
	}
	hi := "+"
	if before != "" {
		hi = "(" + before
	}
	ids, err := s.rdb.ZRevRangeByLex(ctx, s.rolloutIDsKey(), &goredis.ZRangeBy{Max: hi, Min: "-", Count: int64(limit)}).Result()
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	out := make([]store.Rollout, 0, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	vals, err := s.rdb.HMGet(ctx, s.rolloutDocsKey(), ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	for i, v := range vals {
		raw, ok := v.(string)
		if !ok {
			continue // cannot happen: one script writes both
		}
		r, err := decodeRollout(raw)
		if err != nil {
			return nil, fmt.Errorf("list rollouts: %q: %w", ids[i], err)
		}
		out = append(out, r)
	}
	return out, nil
}

// UpdateRollout implements store.Rollouts.
func (s *Store) UpdateRollout(ctx context.Context, expect uint64, r store.Rollout, fence uint64) (store.Rollout, error) {
	if r.Version != expect+1 {
		return store.Rollout{}, fmt.Errorf("update rollout %q: new version %d must be %d+1", r.ID, r.Version, expect)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return store.Rollout{}, fmt.Errorf("update rollout %q: %w", r.ID, err)
	}
	res, err := updateRolloutScript.Run(ctx, s.rdb, []string{s.leaseKey(store.RolloutLease), s.rolloutDocsKey()},
		strconv.FormatUint(fence, 10), r.ID, strconv.FormatUint(expect, 10), raw).StringSlice()
	if err != nil {
		return store.Rollout{}, fmt.Errorf("update rollout %q: %w", r.ID, err)
	}
	switch res[0] {
	case "fenced":
		return store.Rollout{}, fmt.Errorf("update rollout %q: %w: token %d", r.ID, store.ErrFenced, fence)
	case "missing":
		return store.Rollout{}, fmt.Errorf("update rollout %q: %w", r.ID, store.ErrNotFound)
	}
	stored, err := decodeRollout(res[1])
	if err != nil {
		return store.Rollout{}, fmt.Errorf("update rollout %q: %w", r.ID, err)
	}
	if res[0] == "conflict" {
		return stored, fmt.Errorf("update rollout %q: %w: version is %d, expected %d", r.ID, store.ErrConflict, stored.Version, expect)
	}
	return stored, nil
}

func decodeRollout(raw string) (store.Rollout, error) {
	var r store.Rollout
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return store.Rollout{}, fmt.Errorf("decode rollout: %w", err)
	}
	return r, nil
}

// PutExecutions implements store.Rollouts. The rollout must exist
// (store.ErrNotFound otherwise).
func (s *Store) PutExecutions(ctx context.Context, rolloutID string, fence uint64, execs []store.Execution) error {
	args := make([]any, 0, 2+2*len(execs))
	args = append(args, strconv.FormatUint(fence, 10), rolloutID)
	for i, e := range execs {
		if e.DeviceID == "" {
			return fmt.Errorf("put executions of %q: execution %d has no device id", rolloutID, i)
		}
		raw, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("put executions of %q: %w", rolloutID, err)
		}
		args = append(args, e.DeviceID, raw)
	}
	keys := []string{s.leaseKey(store.RolloutLease), s.rolloutDocsKey(), s.executionsKey(rolloutID)}
	res, err := putExecutionsScript.Run(ctx, s.rdb, keys, args...).StringSlice()
	if err != nil {
		return fmt.Errorf("put executions of %q: %w", rolloutID, err)
	}
	switch res[0] {
	case "fenced":
		return fmt.Errorf("put executions of %q: %w: token %d", rolloutID, store.ErrFenced, fence)
	case "missing":
		return fmt.Errorf("put executions of %q: %w", rolloutID, store.ErrNotFound)
	}
	return nil
}

// ListExecutions implements store.Rollouts.
func (s *Store) ListExecutions(ctx context.Context, rolloutID string) ([]store.Execution, error) {
	all, err := s.rdb.HGetAll(ctx, s.executionsKey(rolloutID)).Result()
	if err != nil {
		return nil, fmt.Errorf("list executions of %q: %w", rolloutID, err)
	}
	ids := make([]string, 0, len(all))
	for id := range all {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]store.Execution, 0, len(ids))
	for _, id := range ids {
		var e store.Execution
		if err := json.Unmarshal([]byte(all[id]), &e); err != nil {
			return nil, fmt.Errorf("list executions of %q: decode %q: %w", rolloutID, id, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// acquireScript renews the lease KEYS[1] for holder ARGV[1] by ARGV[2]
// milliseconds, or, when nobody holds it, gives it to ARGV[1] with the next
// token of the counter KEYS[2] (which never expires). It returns the
// lease's token, or 0 when another holder has it.
var acquireScript = goredis.NewScript(`
local h = redis.call('HGET', KEYS[1], 'holder')
if h == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('HGET', KEYS[1], 'fence'))
end
if h then return 0 end
local f = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'fence', f)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return f
`)

// releaseScript deletes the lease KEYS[1] if ARGV[1] holds it.
var releaseScript = goredis.NewScript(`
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
`)

// AcquireLease implements store.Leases. The lease expires by Redis's
// clock (PEXPIRE); ttl is rounded up to a millisecond.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (uint64, error) {
	if holder == "" || ttl <= 0 {
		return 0, fmt.Errorf("acquire lease %q: need a holder and a positive ttl", name)
	}
	ms := (ttl + time.Millisecond - 1) / time.Millisecond
	fence, err := acquireScript.Run(ctx, s.rdb, []string{s.leaseKey(name), s.leaseFenceKey(name)}, holder, int64(ms)).Uint64()
	if err != nil {
		return 0, fmt.Errorf("acquire lease %q: %w", name, err)
	}
	if fence == 0 {
		return 0, fmt.Errorf("acquire lease %q: %w", name, store.ErrLeaseHeld)
	}
	return fence, nil
}

// ReleaseLease implements store.Leases.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	if err := releaseScript.Run(ctx, s.rdb, []string{s.leaseKey(name)}, holder).Err(); err != nil {
		return fmt.Errorf("release lease %q: %w", name, err)
	}
	return nil
}
