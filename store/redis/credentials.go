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
//	<prefix>enroll:<sha256>   hash: doc (JSON), exp (Unix ms), used
//	                          (claimant); the key expires a
//	                          day after the enrollment does
//	<prefix>revoked           hash: device id -> revocation JSON
//	<prefix>jti:<id>          string: claimant; expires with the token
//	<prefix>secret:<name>     string: the secret (SwapSecret compare-and-sets
//	                          it in one script)
//
// Each operation touches one key, so they work unchanged on Redis Cluster.

var _ store.Credentials = (*Store)(nil)

func (s *Store) enrollKey(h string) string   { return s.prefix + "enroll:" + h }
func (s *Store) revokedKey() string          { return s.prefix + "revoked" }
func (s *Store) tokenIDKey(id string) string { return s.prefix + "jti:" + id }
func (s *Store) secretKey(n string) string   { return s.prefix + "secret:" + n }

// PutEnrollment implements store.Enrollments.
func (s *Store) PutEnrollment(ctx context.Context, e store.Enrollment) error {
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	key := s.enrollKey(e.TokenSHA256)
	_, err = s.rdb.TxPipelined(ctx, func(p goredis.Pipeliner) error {
		p.HSet(ctx, key, "doc", raw, "exp", strconv.FormatInt(e.ExpiresAt.UnixMilli(), 10))
		p.ExpireAt(ctx, key, e.ExpiresAt.Add(24*time.Hour))
		return nil
	})
	if err != nil {
		return fmt.Errorf("put enrollment: %w", err)
	}
	return nil
}

// takeScript marks an enrollment used by ARGV[1] unless someone else did, or
// it expired (ARGV[2] is now, in Unix milliseconds).
var takeScript = goredis.NewScript(`
local doc = redis.call('HGET', KEYS[1], 'doc')
if not doc then return {'missing'} end
local used = redis.call('HGET', KEYS[1], 'used')
if used == ARGV[1] then return {'ok', doc} end
if used then return {'used'} end
if tonumber(ARGV[2]) >= tonumber(redis.call('HGET', KEYS[1], 'exp')) then return {'expired'} end
redis.call('HSET', KEYS[1], 'used', ARGV[1])
return {'ok', doc}
`)

// TakeEnrollment implements store.Enrollments.
func (s *Store) TakeEnrollment(ctx context.Context, tokenSHA256, claimant string, now time.Time) (store.Enrollment, error) {
	res, err := takeScript.Run(ctx, s.rdb, []string{s.enrollKey(tokenSHA256)}, claimant, strconv.FormatInt(now.UnixMilli(), 10)).StringSlice()
	if err != nil {
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", err)
	}
	switch res[0] {
	case "missing":
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", store.ErrNotFound)
	case "used":
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", store.ErrUsed)
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

// useScript records a token id for ARGV[1] until ARGV[2] (Unix ms), or
// reports who has it.
var useScript = goredis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
`)

// UseTokenID implements store.TokenIDs.
func (s *Store) UseTokenID(ctx context.Context, id, claimant string, expires time.Time) error {
	// Keep the record at least a second, so a token that expires while it
	// is being checked is still recorded.
	until := max(expires.UnixMilli(), time.Now().Add(time.Second).UnixMilli())
	ok, err := useScript.Run(ctx, s.rdb, []string{s.tokenIDKey(id)}, claimant, strconv.FormatInt(until, 10)).Int()
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
