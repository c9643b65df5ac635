// Package redis is Ferry's production store on Redis (go-redis v9), shared by
// any number of ferryd instances.
//
// Layout, under a configurable prefix (default "ferry:"):
//
//	<prefix>dev:{<id>}          hash: meta (JSON), d (desired JSON), dv
//	                            (desired version), r (reported JSON), rv
//	                            (reported version), es (last event seq)
//	<prefix>dev:{<id>}:events   list of event JSON, newest first, capped
//	<prefix>dev:{<id>}:att      hash: job id -> attestation JSON
//	<prefix>devices             sorted set of device ids (score 0, by id)
//	<prefix>changes             pub/sub channel of changed device ids
//
// A device's keys carry its id as a hash tag, so everything about one device
// shares a Redis Cluster slot. Compare-and-set runs as a Lua script on the one
// device key; the id index is written first and is idempotent, so a crash
// between the two leaves at worst an index entry that List skips.
//
// Rollouts and leases (store.Rollouts, store.Leases):
//
//	<prefix>{rollouts}:docs          hash: rollout id -> rollout JSON
//	<prefix>{rollouts}:ids           sorted set of rollout ids (score 0, by id)
//	<prefix>{rollouts}:exec:<id>     hash: device id -> execution JSON
//	<prefix>{rollouts}:lease:<name>  hash: holder, fence; expires with the
//	                                 lease (PEXPIRE, Redis's clock)
//	<prefix>{rollouts}:fence:<name>  counter: the last fencing token issued
//	                                 for the lease; never expires
//
// The {rollouts} hash tag puts them in one cluster slot, so that each
// rollout write, fenced or not, is one script: the fence check against the
// lease and the write happen at once.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// Store is a store.Devices on Redis. It is safe for concurrent use.
type Store struct {
	rdb    goredis.UniversalClient
	prefix string
	owned  bool
	now    func() time.Time

	// minReplicas and waitTimeout: see SetMinReplicas.
	minReplicas int
	waitTimeout time.Duration
}

var (
	_ store.Devices = (*Store)(nil)
	_ store.Changes = (*Store)(nil)
)

// New returns a Store on an existing client (single node, Sentinel or
// Cluster). Close does not close a client passed to New.
func New(rdb goredis.UniversalClient, prefix string) *Store {
	if prefix == "" {
		prefix = "ferry:"
	}
	return &Store{rdb: rdb, prefix: prefix, now: time.Now}
}

// SetClock sets the wall clock the store turns expiry times into key TTLs
// with (time.Now by default; see the credential keys). Tests give it their
// test clock. Call it before the store is used.
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// Close closes the client if Open created it.
func (s *Store) Close() error {
	if s.owned {
		return s.rdb.Close()
	}
	return nil
}

func (s *Store) deviceKey(id string) string { return s.prefix + "dev:{" + id + "}" }
func (s *Store) eventsKey(id string) string { return s.deviceKey(id) + ":events" }
func (s *Store) attKey(id string) string    { return s.deviceKey(id) + ":att" }
func (s *Store) indexKey() string           { return s.prefix + "devices" }
func (s *Store) changesKey() string         { return s.prefix + "changes" }

// meta is the part of a device that is not versioned.
type meta struct {
	ID        string            `json:"id"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"created_at,omitzero"`
}

// createScript stores a new device unless one exists, and returns the
// stored fields.
var createScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'd', ARGV[2], 'dv', '0', 'r', ARGV[3], 'rv', '0')
  return {'created', ARGV[1], ARGV[2], ARGV[3]}
end
local v = redis.call('HMGET', KEYS[1], 'meta', 'd', 'r')
return {'exists', v[1], v[2], v[3]}
`)

// casScript replaces one versioned document of a device if its version is
// still ARGV[3], appends the event ARGV[6] (if any) to the capped history
// and stores the attestation ARGV[9] under job ARGV[8] (if any), all at
// once. A repeat of a write that already landed (same new version, same
// bytes) succeeds without writing anything.
// KEYS: device hash, events list, attestations hash.
var casScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local vf, df, expect, nextv, doc = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ev, cap, attJob, att = ARGV[6], tonumber(ARGV[7]), ARGV[8], ARGV[9]
local cur = redis.call('HGET', KEYS[1], vf)
local res = 'conflict'
if cur == nextv and redis.call('HGET', KEYS[1], df) == doc then
  res = 'ok'
elseif cur == expect then
  redis.call('HSET', KEYS[1], vf, nextv, df, doc)
  if ev ~= '' then
    local seq = redis.call('HINCRBY', KEYS[1], 'es', 1)
    redis.call('LPUSH', KEYS[2], seq .. ' ' .. ev)
    redis.call('LTRIM', KEYS[2], 0, cap - 1)
  end
  if attJob ~= '' then
    redis.call('HSET', KEYS[3], attJob, att)
  end
  res = 'ok'
end
local v = redis.call('HMGET', KEYS[1], 'meta', 'd', 'r')
return {res, v[1], v[2], v[3]}
`)

// CreateDevice implements store.Devices.
func (s *Store) CreateDevice(ctx context.Context, d store.Device) (store.Device, bool, error) {
	d.Desired.Version, d.Reported.Version = 0, 0
	m, dj, rj, err := encode(d)
	if err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	if err := s.rdb.ZAdd(ctx, s.indexKey(), goredis.Z{Member: d.ID}).Err(); err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: index: %w", d.ID, err)
	}
	res, err := createScript.Run(ctx, s.rdb, []string{s.deviceKey(d.ID)}, m, dj, rj).StringSlice()
	if err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	stored, err := decodeFields(res[1:])
	if err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	// Indexing the stored document every time also repairs the entries of
	// a create that was cut short.
	if err := s.reindex(ctx, &stored, true); err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	return stored, res[0] == "created", nil
}

// GetDevice implements store.Devices.
func (s *Store) GetDevice(ctx context.Context, id string) (store.Device, error) {
	vals, err := s.rdb.HMGet(ctx, s.deviceKey(id), "meta", "d", "r").Result()
	if err != nil {
		return store.Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	d, err := decodeValues(vals)
	if err != nil {
		return store.Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	return d, nil
}

// SetDesired implements store.Devices.
func (s *Store) SetDesired(ctx context.Context, id string, expect uint64, d store.Desired, w store.Write) (store.Device, error) {
	return s.compareAndSet(ctx, id, "dv", "d", expect, d.Version, d, w)
}

// SetReported implements store.Devices.
func (s *Store) SetReported(ctx context.Context, id string, expect uint64, r store.Reported, w store.Write) (store.Device, error) {
	return s.compareAndSet(ctx, id, "rv", "r", expect, r.Version, r, w)
}

func (s *Store) compareAndSet(ctx context.Context, id, versionField, docField string, expect, next uint64, doc any, w store.Write) (store.Device, error) {
	if next != expect+1 {
		return store.Device{}, fmt.Errorf("set device %q: new version %d must be %d+1", id, next, expect)
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
	}
	var ev, attJob, att []byte
	if w.Event.Kind != "" {
		w.Event.Seq = 0 // the script numbers events
		if ev, err = json.Marshal(w.Event); err != nil {
			return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
		}
	}
	if w.Attestation != nil {
		attJob = []byte(w.Attestation.JobID)
		if att, err = json.Marshal(w.Attestation); err != nil {
			return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
		}
	}
	res, err := casScript.Run(ctx, s.rdb, []string{s.deviceKey(id), s.eventsKey(id), s.attKey(id)},
		versionField, docField, strconv.FormatUint(expect, 10), strconv.FormatUint(next, 10), raw,
		ev, store.MaxEvents, attJob, att).StringSlice()
	if err != nil {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
	}
	if res[0] == "missing" {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, store.ErrNotFound)
	}
	dev, err := decodeFields(res[1:4])
	if err != nil {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
	}
	if res[0] == "ok" {
		if err := s.reindex(ctx, &dev, false); err != nil {
			return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
		}
	}
	if res[0] == "conflict" {
		cur := dev.Desired.Version
		if versionField == "rv" {
			cur = dev.Reported.Version
		}
		return dev, fmt.Errorf("set device %q: %w: version is %d, expected %d", id, store.ErrConflict, cur, expect)
	}
	return dev, nil
}

func encode(d store.Device) (m, desired, reported []byte, err error) {
	if m, err = json.Marshal(meta{ID: d.ID, Labels: d.Labels, CreatedAt: d.CreatedAt}); err != nil {
		return nil, nil, nil, err
	}
	if desired, err = json.Marshal(d.Desired); err != nil {
		return nil, nil, nil, err
	}
	if reported, err = json.Marshal(d.Reported); err != nil {
		return nil, nil, nil, err
	}
	return m, desired, reported, nil
}

// decodeValues decodes an HMGET of meta, d, r; a missing hash gives nils.
func decodeValues(vals []any) (store.Device, error) {
	fields := make([]string, len(vals))
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			return store.Device{}, store.ErrNotFound
		}
		fields[i] = s
	}
	return decodeFields(fields)
}

func decodeFields(f []string) (store.Device, error) {
	if len(f) != 3 {
		return store.Device{}, store.ErrNotFound
	}
	var (
		m meta
		d store.Device
	)
	if err := json.Unmarshal([]byte(f[0]), &m); err != nil {
		return store.Device{}, fmt.Errorf("decode meta: %w", err)
	}
	d.ID, d.Labels, d.CreatedAt = m.ID, m.Labels, m.CreatedAt
	if err := json.Unmarshal([]byte(f[1]), &d.Desired); err != nil {
		return store.Device{}, fmt.Errorf("decode desired: %w", err)
	}
	if err := json.Unmarshal([]byte(f[2]), &d.Reported); err != nil {
		return store.Device{}, fmt.Errorf("decode reported: %w", err)
	}
	return d, nil
}

// ListEvents implements store.Devices. The history list holds consecutive
// sequence numbers, newest first, so the page start is computed, not
// searched.
func (s *Store) ListEvents(ctx context.Context, id string, before uint64, limit int) ([]store.Event, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("list events: limit %d must be positive", limit)
	}
	vals, err := s.rdb.HMGet(ctx, s.deviceKey(id), "meta", "es").Result()
	if err != nil {
		return nil, fmt.Errorf("list events of %q: %w", id, err)
	}
	if vals[0] == nil {
		return nil, fmt.Errorf("list events of %q: %w", id, store.ErrNotFound)
	}
	var last uint64
	if v, ok := vals[1].(string); ok {
		last, _ = strconv.ParseUint(v, 10, 64)
	}
	start := uint64(0)
	if before != 0 {
		if before > last {
			before = last + 1
		}
		start = last + 1 - before
	}
	if start >= store.MaxEvents {
		return nil, nil
	}
	raw, err := s.rdb.LRange(ctx, s.eventsKey(id), int64(start), int64(start)+int64(limit)-1).Result()
	if err != nil {
		return nil, fmt.Errorf("list events of %q: %w", id, err)
	}
	out := make([]store.Event, 0, len(raw))
	for _, r := range raw {
		seq, js, ok := strings.Cut(r, " ")
		if !ok {
			return nil, fmt.Errorf("list events of %q: malformed entry", id)
		}
		var ev store.Event
		if err := json.Unmarshal([]byte(js), &ev); err != nil {
			return nil, fmt.Errorf("list events of %q: %w", id, err)
		}
		ev.Seq, _ = strconv.ParseUint(seq, 10, 64)
		out = append(out, ev)
	}
	return out, nil
}

// GetAttestation implements store.Devices.
func (s *Store) GetAttestation(ctx context.Context, id, jobID string) (store.Attestation, error) {
	raw, err := s.rdb.HGet(ctx, s.attKey(id), jobID).Bytes()
	if errors.Is(err, goredis.Nil) {
		if n, err := s.rdb.Exists(ctx, s.deviceKey(id)).Result(); err == nil && n == 0 {
			return store.Attestation{}, fmt.Errorf("get attestation of %q: %w", id, store.ErrNotFound)
		}
		return store.Attestation{}, fmt.Errorf("get attestation of %q job %q: %w", id, jobID, store.ErrNoAttestation)
	}
	if err != nil {
		return store.Attestation{}, fmt.Errorf("get attestation of %q job %q: %w", id, jobID, err)
	}
	var a store.Attestation
	if err := json.Unmarshal(raw, &a); err != nil {
		return store.Attestation{}, fmt.Errorf("get attestation of %q job %q: %w", id, jobID, err)
	}
	return a, nil
}

// PublishChange implements store.Changes with Redis pub/sub.
func (s *Store) PublishChange(ctx context.Context, id string) error {
	return s.rdb.Publish(ctx, s.changesKey(), id).Err()
}

// SubscribeChanges implements store.Changes. go-redis reconnects a broken
// subscription by itself; notices published meanwhile are lost, which the
// streams' periodic check covers.
func (s *Store) SubscribeChanges(ctx context.Context, fn func(id string)) error {
	sub := s.rdb.Subscribe(ctx, s.changesKey())
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // wait for the subscription
		return fmt.Errorf("subscribe to changes: %w", err)
	}
	ch := sub.Channel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m, ok := <-ch:
			if !ok {
				return nil
			}
			fn(m.Payload)
		}
	}
}
