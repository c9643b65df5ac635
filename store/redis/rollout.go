package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// Rollouts and leases (store.Rollouts, store.Leases):
//
//	<prefix>{rollouts}:docs            hash: rollout id -> rollout JSON
//	<prefix>{rollouts}:ids             sorted set of rollout ids (lex)
//	<prefix>{rollouts}:buckets:<id>    set of the buckets that hold
//	                                   executions of rollout id
//	<prefix>{rollouts}:lease:<name>    hash: holder, fence; expires with
//	                                   the lease (PEXPIRE, Redis's clock)
//	<prefix>{rollouts}:fence:<name>    counter: the last fencing token
//	                                   issued for the lease; never expires
//	B rexec:<id>                       hash, in each bucket B: device id ->
//	                                   execution JSON of rollout id
//	B fence:<name>                     the highest fencing token of lease
//	                                   name that bucket B has seen
//
// The {rollouts} keys are few and small (a rollout's document, not its
// devices), and share one slot so that a fenced rollout update checks the
// lease and writes in one script. Executions, one per device, live in the
// device's bucket, so a large rollout's dispatch spreads over the masters
// like the devices' own writes. A fenced PutExecutions first checks the
// lease in {rollouts}, then each bucket's script refuses a token below the
// highest that bucket has seen (storage-side fencing): once a new holder
// has written to a bucket, or AcquireLease has raised every bucket to its
// token, the old holder's writes there are refused. No script crosses a
// slot.

var (
	_ store.Rollouts = (*Store)(nil)
	_ store.Leases   = (*Store)(nil)
)

func (s *Store) rolloutDocsKey() string             { return s.prefix + "{rollouts}:docs" }
func (s *Store) rolloutIDsKey() string              { return s.prefix + "{rollouts}:ids" }
func (s *Store) rolloutBucketsKey(id string) string { return s.prefix + "{rollouts}:buckets:" + id }
func (s *Store) leaseKey(name string) string        { return s.prefix + "{rollouts}:lease:" + name }
func (s *Store) leaseFenceKey(name string) string   { return s.prefix + "{rollouts}:fence:" + name }

// executionsKey is the hash of rollout id's executions in bucket b.
func (s *Store) executionsKey(b int, id string) string { return s.bucketPrefix(b) + "rexec:" + id }

// bucketFenceKey holds the highest token of lease name that bucket b saw.
func (s *Store) bucketFenceKey(b int, name string) string {
	return s.bucketPrefix(b) + "fence:" + name
}

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

// claimExecutionsScript checks a PutExecutions of rollout ARGV[2]: the
// fence check, the rollout exists, and records the buckets ARGV[3:] that
// will hold its executions.
// KEYS: lease hash, documents hash, buckets set. ARGV: fence, id, buckets.
var claimExecutionsScript = goredis.NewScript(fenceCheck + `
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then return {'missing'} end
for i = 3, #ARGV, 1000 do
  redis.call('SADD', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return {'ok'}
`)

// bucketFenceLua refuses a non-zero token ARGV[1] below the highest one
// the bucket has seen (KEYS[2]) and raises the highest to it.
const bucketFenceLua = `
local token = tonumber(ARGV[1])
if token ~= 0 then
  local seen = tonumber(redis.call('GET', KEYS[2]) or '0')
  if token < seen then return 'fenced' end
  if token > seen then redis.call('SET', KEYS[2], ARGV[1]) end
end
`

// putExecutionsScript stores one bucket's device/execution pairs ARGV[2:]
// after the bucket's fence check, in chunks that stay below Lua's limit on
// unpacked arguments.
// KEYS: the bucket's executions hash, the bucket's fence. ARGV: fence,
// pairs.
var putExecutionsScript = goredis.NewScript(bucketFenceLua + `
for i = 2, #ARGV, 1000 do
  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
return 'ok'
`)

// raiseFenceScript raises a bucket's highest token (KEYS[2]) to ARGV[1].
var raiseFenceScript = goredis.NewScript(bucketFenceLua + `return 'ok'`)

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
	res, err := s.runOne(ctx, scriptCall{createRolloutScript, []string{s.rolloutDocsKey(), s.rolloutIDsKey()}, []any{r.ID, raw}})
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
	res, err := s.runOne(ctx, scriptCall{updateRolloutScript, []string{s.leaseKey(store.RolloutLease), s.rolloutDocsKey()},
		[]any{strconv.FormatUint(fence, 10), r.ID, strconv.FormatUint(expect, 10), raw}})
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
// (store.ErrNotFound otherwise). Every execution is checked before any is
// written, and each bucket's share is written by one script; on a cluster
// the shares of different buckets are not one transaction, which only a
// failure between them can show (a repeat of the put completes it).
func (s *Store) PutExecutions(ctx context.Context, rolloutID string, fence uint64, execs []store.Execution) error {
	token := strconv.FormatUint(fence, 10)
	perBucket := map[int][]any{}
	for i, e := range execs {
		if e.DeviceID == "" {
			return fmt.Errorf("put executions of %q: execution %d has no device id", rolloutID, i)
		}
		raw, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("put executions of %q: %w", rolloutID, err)
		}
		b := bucketOf(e.DeviceID)
		if perBucket[b] == nil {
			perBucket[b] = []any{token}
		}
		perBucket[b] = append(perBucket[b], e.DeviceID, raw)
	}
	claim := []any{token, rolloutID}
	for b := range perBucket {
		claim = append(claim, b)
	}
	keys := []string{s.leaseKey(store.RolloutLease), s.rolloutDocsKey(), s.rolloutBucketsKey(rolloutID)}
	res, err := s.runOne(ctx, scriptCall{claimExecutionsScript, keys, claim})
	if err != nil {
		return fmt.Errorf("put executions of %q: %w", rolloutID, err)
	}
	switch res[0] {
	case "fenced":
		return fmt.Errorf("put executions of %q: %w: token %d", rolloutID, store.ErrFenced, fence)
	case "missing":
		return fmt.Errorf("put executions of %q: %w", rolloutID, store.ErrNotFound)
	}
	calls := make([]scriptCall, 0, len(perBucket))
	for b, args := range perBucket {
		calls = append(calls, scriptCall{putExecutionsScript,
			[]string{s.executionsKey(b, rolloutID), s.bucketFenceKey(b, store.RolloutLease)}, args})
	}
	cmds, err := s.run(ctx, true, calls)
	if err != nil {
		return fmt.Errorf("put executions of %q: %w", rolloutID, err)
	}
	for _, c := range cmds {
		out, err := c.Text()
		if err != nil {
			return fmt.Errorf("put executions of %q: %w", rolloutID, err)
		}
		if out == "fenced" {
			return fmt.Errorf("put executions of %q: %w: token %d is below one a bucket has seen", rolloutID, store.ErrFenced, fence)
		}
	}
	return nil
}

// ListExecutions implements store.Rollouts: it reads the buckets the
// rollout's executions were put in, in one pipeline.
func (s *Store) ListExecutions(ctx context.Context, rolloutID string) ([]store.Execution, error) {
	buckets, err := s.rdb.SMembers(ctx, s.rolloutBucketsKey(rolloutID)).Result()
	if err != nil {
		return nil, fmt.Errorf("list executions of %q: %w", rolloutID, err)
	}
	cmds := make([]*goredis.MapStringStringCmd, 0, len(buckets))
	_, err = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, v := range buckets {
			b, err := strconv.Atoi(v)
			if err != nil || b < 0 || b >= Buckets {
				return fmt.Errorf("bucket %q", v)
			}
			cmds = append(cmds, p.HGetAll(ctx, s.executionsKey(b, rolloutID)))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list executions of %q: %w", rolloutID, err)
	}
	var out []store.Execution
	for _, c := range cmds {
		for id, raw := range c.Val() {
			var e store.Execution
			if err := json.Unmarshal([]byte(raw), &e); err != nil {
				return nil, fmt.Errorf("list executions of %q: decode %q: %w", rolloutID, id, err)
			}
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b store.Execution) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	if out == nil {
		out = []store.Execution{}
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
	if name == store.RolloutLease {
		if err := s.raiseFences(ctx, name, fence); err != nil {
			return 0, fmt.Errorf("acquire lease %q: %w", name, err)
		}
	}
	return fence, nil
}

// raiseFences tells every bucket, once per token, that token is the lease's
// newest, so that from then on each bucket refuses the older holders'
// executions even where the new holder has not written yet. Until this
// succeeds AcquireLease fails, and a retry (a renewal, same token) tries
// again.
func (s *Store) raiseFences(ctx context.Context, name string, token uint64) error {
	s.fenceMu.Lock()
	done := s.raised[name] >= token
	s.fenceMu.Unlock()
	if done {
		return nil
	}
	calls := make([]scriptCall, Buckets)
	for b := range Buckets {
		calls[b] = scriptCall{raiseFenceScript, []string{s.executionsKey(b, ""), s.bucketFenceKey(b, name)},
			[]any{strconv.FormatUint(token, 10)}}
	}
	cmds, err := s.run(ctx, false, calls)
	if err != nil {
		return fmt.Errorf("raise bucket fences: %w", err)
	}
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return fmt.Errorf("raise bucket fences: %w", err)
		}
	}
	s.fenceMu.Lock()
	s.raised[name] = max(s.raised[name], token)
	s.fenceMu.Unlock()
	return nil
}

// ReleaseLease implements store.Leases.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	if err := releaseScript.Run(ctx, s.rdb, []string{s.leaseKey(name)}, holder).Err(); err != nil {
		return fmt.Errorf("release lease %q: %w", name, err)
	}
	return nil
}
