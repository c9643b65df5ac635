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

// Credential keys, under the prefix:
//
//	<prefix>enroll:{<id>}           hash: cur (token hash of the device's
//	                                current enrollment), enrolled ("1" once
//	                                the device took one); kept for good
//	<prefix>enroll:{<id>}:<sha256>  hash: doc (JSON), exp (Unix ms), used
//	                                (claimant); expires Retention after
//	                                the enrollment does
//	<prefix>enrollment:<sha256>     string: the device id, so that a token
//	                                hash finds its device; expires with
//	                                the enrollment's key
//	<prefix>revoked                 hash: device id -> revocation JSON
//	<prefix>jti:<id>                string: claimant; expires with the token
//	<prefix>secret:<name>           string: the secret (SwapSecret
//	                                compare-and-sets it in one script)
//
// A script touches either one key or the keys of one device, which share
// the device's hash tag {<id>}, so they work
// unchanged on Redis Cluster.
//
// Which clock decides a key's lifetime: this store's wall clock (s.now,
// the ferryd host's time.Now unless SetClock) turns an expiry into a TTL,
// and redis-server only counts that TTL down; the Redis host's calendar
// date plays no part. Whether an enrollment still kept has expired
// (store.ErrExpired) is decided by the now passed to TakeEnrollment. The
// bbolt store keeps enrollments and token ids exactly as long, by its own
// wall clock, so the two backends agree.

var _ store.Credentials = (*Store)(nil)

func (s *Store) enrollDeviceKey(id string) string { return s.prefix + "enroll:{" + id + "}" }
func (s *Store) enrollKey(id, h string) string    { return s.enrollDeviceKey(id) + ":" + h }
func (s *Store) enrollmentRefKey(h string) string { return s.prefix + "enrollment:" + h }
func (s *Store) revokedKey() string               { return s.prefix + "revoked" }
func (s *Store) tokenIDKey(id string) string      { return s.prefix + "jti:" + id }
func (s *Store) secretKey(n string) string        { return s.prefix + "secret:" + n }

// retention returns how long from now an enrollment expiring at exp is
// kept, by this store's wall clock.
func (s *Store) retention(exp time.Time) time.Duration {
	return exp.Add(store.Retention).Sub(s.now())
}

// putEnrollScript stores an enrollment (KEYS[2]) as the device's (KEYS[1])
// current one, unless the hash is stored already (a repeat) or the device
// has enrolled and ARGV[5] is not "1". ARGV: doc, exp (Unix ms), hash, TTL
// (ms), reenroll.
var putEnrollScript = goredis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 1 then return 'ok' end
if redis.call('HGET', KEYS[1], 'enrolled') and ARGV[5] ~= '1' then return 'enrolled' end
redis.call('HSET', KEYS[2], 'doc', ARGV[1], 'exp', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[1], 'cur', ARGV[3])
return 'ok'
`)

// PutEnrollment implements store.Enrollments. The hash's reference to its
// device is written first; if the script then refuses, the reference
// points at no enrollment and expires.
func (s *Store) PutEnrollment(ctx context.Context, e store.Enrollment, reenroll bool) error {
	ttl := s.retention(e.ExpiresAt)
	if ttl <= 0 {
		return nil
	}
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := s.rdb.Set(ctx, s.enrollmentRefKey(e.TokenSHA256), e.DeviceID, ttl).Err(); err != nil {
		return fmt.Errorf("put enrollment for %s: %w", e.DeviceID, err)
	}
	flag := "0"
	if reenroll {
		flag = "1"
	}
	res, err := putEnrollScript.Run(ctx, s.rdb,
		[]string{s.enrollDeviceKey(e.DeviceID), s.enrollKey(e.DeviceID, e.TokenSHA256)},
		raw, strconv.FormatInt(e.ExpiresAt.UnixMilli(), 10), e.TokenSHA256,
		strconv.FormatInt(max(ttl.Milliseconds(), 1), 10), flag).Text()
	if err != nil {
		return fmt.Errorf("put enrollment for %s: %w", e.DeviceID, err)
	}
	if res == "enrolled" {
		return fmt.Errorf("put enrollment for %s: %w", e.DeviceID, store.ErrEnrolled)
	}
	return nil
}

// takeScript marks an enrollment (KEYS[2]) used by ARGV[1] unless someone
// else did, a newer one of the device (KEYS[1]) replaced it, or it expired
// (ARGV[2] is now, in Unix milliseconds; ARGV[3] is the hash). A device
// without a cur field (stored before it existed) accepts any one of its
// enrollments once.
var takeScript = goredis.NewScript(`
local doc = redis.call('HGET', KEYS[2], 'doc')
if not doc then return {'missing'} end
local used = redis.call('HGET', KEYS[2], 'used')
if used == ARGV[1] then return {'ok', doc} end
if used then return {'used'} end
local cur = redis.call('HGET', KEYS[1], 'cur')
if cur and cur ~= ARGV[3] then return {'superseded'} end
if tonumber(ARGV[2]) >= tonumber(redis.call('HGET', KEYS[2], 'exp')) then return {'expired'} end
redis.call('HSET', KEYS[2], 'used', ARGV[1])
redis.call('HSET', KEYS[1], 'cur', ARGV[3], 'enrolled', '1')
return {'ok', doc}
`)

// TakeEnrollment implements store.Enrollments.
func (s *Store) TakeEnrollment(ctx context.Context, tokenSHA256, claimant string, now time.Time) (store.Enrollment, error) {
	id, err := s.rdb.Get(ctx, s.enrollmentRefKey(tokenSHA256)).Result()
	if errors.Is(err, goredis.Nil) {
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", store.ErrNotFound)
	}
	if err != nil {
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", err)
	}
	res, err := takeScript.Run(ctx, s.rdb, []string{s.enrollDeviceKey(id), s.enrollKey(id, tokenSHA256)},
		claimant, strconv.FormatInt(now.UnixMilli(), 10), tokenSHA256).StringSlice()
	if err != nil {
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", err)
	}
	switch res[0] {
	case "missing":
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", store.ErrNotFound)
	case "used":
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", store.ErrUsed)
	case "superseded":
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", store.ErrSuperseded)
	case "expired":
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", store.ErrExpired)
	}
	var e store.Enrollment
	if err := json.Unmarshal([]byte(res[1]), &e); err != nil {
		return store.Enrollment{}, fmt.Errorf("take enrollment: decode: %w", err)
	}
	return e, nil
}

// revokeScript stores a revocation unless one exists and returns the stored
// one.
var revokeScript = goredis.NewScript(`
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HGET', KEYS[1], ARGV[1])
`)

// Revoke implements store.Revocations.
func (s *Store) Revoke(ctx context.Context, r store.Revocation) (store.Revocation, error) {
	raw, err := json.Marshal(r)
	if err != nil {
		return store.Revocation{}, err
	}
	got, err := revokeScript.Run(ctx, s.rdb, []string{s.revokedKey()}, r.DeviceID, raw).Text()
	if err != nil {
		return store.Revocation{}, fmt.Errorf("revoke %q: %w", r.DeviceID, err)
	}
	var stored store.Revocation
	if err := json.Unmarshal([]byte(got), &stored); err != nil {
		return store.Revocation{}, fmt.Errorf("revoke %q: decode: %w", r.DeviceID, err)
	}
	return stored, nil
}

// GetRevocation implements store.Revocations.
func (s *Store) GetRevocation(ctx context.Context, id string) (store.Revocation, error) {
	raw, err := s.rdb.HGet(ctx, s.revokedKey(), id).Bytes()
	if errors.Is(err, goredis.Nil) {
		return store.Revocation{}, fmt.Errorf("get revocation %q: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Revocation{}, fmt.Errorf("get revocation %q: %w", id, err)
	}
	var r store.Revocation
	if err := json.Unmarshal(raw, &r); err != nil {
		return store.Revocation{}, fmt.Errorf("get revocation %q: decode: %w", id, err)
	}
	return r, nil
}

// ListRevocations implements store.Revocations.
func (s *Store) ListRevocations(ctx context.Context) ([]store.Revocation, error) {
	all, err := s.rdb.HGetAll(ctx, s.revokedKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	out := make([]store.Revocation, 0, len(all))
	for id, raw := range all {
		var r store.Revocation
		if err := json.Unmarshal([]byte(raw), &r); err != nil {
			return nil, fmt.Errorf("list revocations: decode %q: %w", id, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// useScript records a token id for ARGV[1] for ARGV[2] milliseconds, or
// reports who has it.
var useScript = goredis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
`)

// UseTokenID implements store.TokenIDs.
func (s *Store) UseTokenID(ctx context.Context, id, claimant string, expires time.Time) error {
	// Keep the record at least a second, so a token that expires while it
	// is being checked is still recorded.
	ttl := max(expires.Sub(s.now()), time.Second)
	ok, err := useScript.Run(ctx, s.rdb, []string{s.tokenIDKey(id)}, claimant, strconv.FormatInt(ttl.Milliseconds(), 10)).Int()
	if err != nil {
		return fmt.Errorf("use token id: %w", err)
	}
	if ok != 1 {
		return fmt.Errorf("use token id: %w", store.ErrUsed)
	}
	return nil
}

// GetOrCreateSecret implements store.Secrets.
func (s *Store) GetOrCreateSecret(ctx context.Context, name string, candidate []byte) ([]byte, error) {
	key := s.secretKey(name)
	if err := s.rdb.SetNX(ctx, key, candidate, 0).Err(); err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	out, err := s.rdb.Get(ctx, key).Bytes()
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return out, nil
}

// swapSecretScript sets KEYS[1] to ARGV[2] if it holds ARGV[1]; it
// succeeds without a change if it already holds ARGV[2] (a retry).
var swapSecretScript = goredis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then return 'missing' end
if cur == ARGV[2] then return 'ok' end
if cur ~= ARGV[1] then return 'conflict' end
redis.call('SET', KEYS[1], ARGV[2])
return 'ok'
`)

// SwapSecret implements store.Secrets.
func (s *Store) SwapSecret(ctx context.Context, name string, prev, next []byte) error {
	res, err := swapSecretScript.Run(ctx, s.rdb, []string{s.secretKey(name)}, prev, next).Text()
	if err != nil {
		return fmt.Errorf("swap secret %q: %w", name, err)
	}
	switch res {
	case "ok":
		return nil
	case "missing":
		return fmt.Errorf("swap secret %q: %w", name, store.ErrNotFound)
	default:
		return fmt.Errorf("swap secret %q: %w", name, store.ErrConflict)
	}
}
