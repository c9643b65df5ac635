// Package redis is Ferry's production store on Redis (go-redis v9), shared by
// any number of ferryd instances.
//
// Layout, under a configurable prefix (default "ferry:"):
//
//	<prefix>dev:{<id>}   hash: meta (JSON), d (desired JSON), dv (desired
//	                     version), r (reported JSON), rv (reported version)
//	<prefix>devices      sorted set of device ids (score 0, ordered by id)
//
// A device's keys carry its id as a hash tag, so everything about one device
// shares a Redis Cluster slot. Compare-and-set runs as a Lua script on the one
// device key; the id index is written first and is idempotent, so a crash
// between the two leaves at worst an index entry that List skips.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// Store is a store.Devices on Redis. It is safe for concurrent use.
type Store struct {
	rdb    goredis.UniversalClient
	prefix string
	owned  bool
}

var _ store.Devices = (*Store)(nil)

// Open connects to the Redis server at url (redis:// or rediss://) and
// checks that it answers.
func Open(ctx context.Context, url, prefix string) (*Store, error) {
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	rdb := goredis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis %s: %w", opts.Addr, err)
	}
	s := New(rdb, prefix)
	s.owned = true
	return s, nil
}

// New returns a Store on an existing client (single node, Sentinel or
// Cluster). Close does not close a client passed to New.
func New(rdb goredis.UniversalClient, prefix string) *Store {
	if prefix == "" {
		prefix = "ferry:"
	}
	return &Store{rdb: rdb, prefix: prefix}
}

// Close closes the client if Open created it.
func (s *Store) Close() error {
	if s.owned {
		return s.rdb.Close()
	}
	return nil
}

func (s *Store) deviceKey(id string) string { return s.prefix + "dev:{" + id + "}" }
func (s *Store) indexKey() string           { return s.prefix + "devices" }

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
// still ARGV[3]. A repeat of a write that already landed (same new version,
// same bytes) succeeds without writing.
var casScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'missing'}
end
local vf, df, expect, nextv, doc = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cur = redis.call('HGET', KEYS[1], vf)
local res = 'conflict'
if cur == nextv and redis.call('HGET', KEYS[1], df) == doc then
  res = 'ok'
elseif cur == expect then
  redis.call('HSET', KEYS[1], vf, nextv, df, doc)
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

// ListDevices implements store.Devices.
func (s *Store) ListDevices(ctx context.Context, opts store.ListOptions) ([]store.Device, error) {
	if opts.Limit <= 0 {
		return nil, fmt.Errorf("list devices: limit %d must be positive", opts.Limit)
	}
	min := "-"
	if opts.After != "" {
		min = "(" + opts.After
	}
	var out []store.Device
	for len(out) < opts.Limit {
		ids, err := s.rdb.ZRangeArgs(ctx, goredis.ZRangeArgs{
			Key: s.indexKey(), Start: min, Stop: "+", ByLex: true, Count: int64(opts.Limit - len(out)),
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
			out = append(out, d)
		}
		min = "(" + ids[len(ids)-1]
	}
	return out, nil
}

// SetDesired implements store.Devices.
func (s *Store) SetDesired(ctx context.Context, id string, expect uint64, d store.Desired) (store.Device, error) {
	return s.compareAndSet(ctx, id, "dv", "d", expect, d.Version, d)
}

// SetReported implements store.Devices.
func (s *Store) SetReported(ctx context.Context, id string, expect uint64, r store.Reported) (store.Device, error) {
	return s.compareAndSet(ctx, id, "rv", "r", expect, r.Version, r)
}

func (s *Store) compareAndSet(ctx context.Context, id, versionField, docField string, expect, next uint64, doc any) (store.Device, error) {
	if next != expect+1 {
		return store.Device{}, fmt.Errorf("set device %q: new version %d must be %d+1", id, next, expect)
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
	}
	res, err := casScript.Run(ctx, s.rdb, []string{s.deviceKey(id)},
		versionField, docField, strconv.FormatUint(expect, 10), strconv.FormatUint(next, 10), raw).StringSlice()
	if err != nil {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
	}
	if res[0] == "missing" {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, store.ErrNotFound)
	}
	dev, err := decodeFields(res[1:])
	if err != nil {
		return store.Device{}, fmt.Errorf("set device %q: %w", id, err)
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
