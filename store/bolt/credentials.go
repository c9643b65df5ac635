package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/ferryhq/ferry/store"
)

// Buckets of the credential broker: enrollments holds one storedEnrollment
// per token hash; enrollment-devices one enrollmentDevice per device id
// (which enrollment is current, and whether the device has taken one),
// kept for good. Both change in the same transaction.
var (
	enrollmentsBucket       = []byte("enrollments")
	enrollmentDevicesBucket = []byte("enrollment-devices")
	revocationsBucket       = []byte("revocations")
	tokenIDsBucket          = []byte("token-ids")
	secretsBucket           = []byte("secrets")
)

var _ store.Credentials = (*Store)(nil)

// bucket returns the named bucket, creating it in a write transaction.
func bucket(tx *bbolt.Tx, name []byte) (*bbolt.Bucket, error) {
	if tx.Writable() {
		return tx.CreateBucketIfNotExists(name)
	}
	return tx.Bucket(name), nil
}

type storedEnrollment struct {
	store.Enrollment
	UsedBy string `json:"used_by,omitempty"`
}

// enrollmentDevice is a device's enrollment state. A device without one
// (stored before this record existed) accepts any of its enrollments once.
type enrollmentDevice struct {
	Current  string `json:"current,omitempty"`
	Enrolled bool   `json:"enrolled,omitempty"`
}

func getJSON(b *bbolt.Bucket, key string, v any) (bool, error) {
	raw := b.Get([]byte(key))
	if raw == nil {
		return false, nil
	}
	return true, json.Unmarshal(raw, v)
}

func putJSON(b *bbolt.Bucket, key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), raw)
}

// retained reports whether an enrollment expiring at exp is still kept at
// now, by this store's wall clock (see store.Enrollments). The Redis store
// keeps its keys exactly as long.
func retained(exp, now time.Time) bool { return now.Before(exp.Add(store.Retention)) }

// PutEnrollment implements store.Enrollments.
func (s *Store) PutEnrollment(ctx context.Context, e store.Enrollment, reenroll bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.now()
	if !retained(e.ExpiresAt, now) {
		return nil
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, enrollmentsBucket)
		if err != nil {
			return err
		}
		devs, err := bucket(tx, enrollmentDevicesBucket)
		if err != nil {
			return err
		}
		if b.Get([]byte(e.TokenSHA256)) != nil {
			return nil // a repeat
		}
		var dev enrollmentDevice
		if _, err := getJSON(devs, e.DeviceID, &dev); err != nil {
			return err
		}
		if dev.Enrolled && !reenroll {
			return store.ErrEnrolled
		}
		if rand.IntN(64) == 0 {
			pruneEnrollments(b, now)
		}
		if err := putJSON(b, e.TokenSHA256, storedEnrollment{Enrollment: e}); err != nil {
			return err
		}
		dev.Current = e.TokenSHA256
		return putJSON(devs, e.DeviceID, dev)
	})
	if err != nil {
		return fmt.Errorf("put enrollment for %s: %w", e.DeviceID, err)
	}
	return nil
}

// pruneEnrollments drops enrollments past their retention.
func pruneEnrollments(b *bbolt.Bucket, now time.Time) {
	var old [][]byte
	_ = b.ForEach(func(k, v []byte) error {
		var e storedEnrollment
		if json.Unmarshal(v, &e) == nil && !retained(e.ExpiresAt, now) {
			old = append(old, bytes.Clone(k))
		}
		return nil
	})
	for _, k := range old {
		_ = b.Delete(k)
	}
}

// TakeEnrollment implements store.Enrollments.
func (s *Store) TakeEnrollment(ctx context.Context, tokenSHA256, claimant string, now time.Time) (store.Enrollment, error) {
	if err := ctx.Err(); err != nil {
		return store.Enrollment{}, err
	}
	var e storedEnrollment
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, enrollmentsBucket)
		if err != nil {
			return err
		}
		devs, err := bucket(tx, enrollmentDevicesBucket)
		if err != nil {
			return err
		}
		found, err := getJSON(b, tokenSHA256, &e)
		switch {
		case err != nil:
			return err
		case !found:
			return store.ErrNotFound
		case !retained(e.ExpiresAt, s.now()):
			return store.ErrNotFound // pruned later
		}
		var dev enrollmentDevice
		known, err := getJSON(devs, e.DeviceID, &dev)
		if err != nil {
			return err
		}
		switch {
		case e.UsedBy == claimant:
			return nil
		case e.UsedBy != "":
			return store.ErrUsed
		case known && dev.Current != tokenSHA256:
			return store.ErrSuperseded
		case !now.Before(e.ExpiresAt):
			return store.ErrExpired
		}
		e.UsedBy = claimant
		if err := putJSON(b, tokenSHA256, e); err != nil {
			return err
		}
		return putJSON(devs, e.DeviceID, enrollmentDevice{Current: tokenSHA256, Enrolled: true})
	})
	if err != nil {
		return store.Enrollment{}, fmt.Errorf("take enrollment: %w", err)
	}
	return e.Enrollment, nil
}

// Revoke implements store.Revocations.
func (s *Store) Revoke(ctx context.Context, r store.Revocation) (store.Revocation, error) {
	if err := ctx.Err(); err != nil {
		return store.Revocation{}, err
	}
	var stored store.Revocation
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, revocationsBucket)
		if err != nil {
			return err
		}
		if raw := b.Get([]byte(r.DeviceID)); raw != nil {
			return json.Unmarshal(raw, &stored)
		}
		raw, err := json.Marshal(r)
		if err != nil {
			return err
		}
		stored = r
		return b.Put([]byte(r.DeviceID), raw)
	})
	if err != nil {
		return store.Revocation{}, fmt.Errorf("revoke %q: %w", r.DeviceID, err)
	}
	return stored, nil
}

// GetRevocation implements store.Revocations.
func (s *Store) GetRevocation(ctx context.Context, id string) (store.Revocation, error) {
	if err := ctx.Err(); err != nil {
		return store.Revocation{}, err
	}
	var r store.Revocation
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(revocationsBucket)
		if b == nil {
			return store.ErrNotFound
		}
		raw := b.Get([]byte(id))
		if raw == nil {
			return store.ErrNotFound
		}
		return json.Unmarshal(raw, &r)
	})
	if err != nil {
		return store.Revocation{}, fmt.Errorf("get revocation %q: %w", id, err)
	}
	return r, nil
}

// ListRevocations implements store.Revocations.
func (s *Store) ListRevocations(ctx context.Context) ([]store.Revocation, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []store.Revocation
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(revocationsBucket)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var r store.Revocation
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode revocation %q: %w", k, err)
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	return out, nil
}

type usedTokenID struct {
	Claimant string    `json:"c"`
	Expires  time.Time `json:"e"`
}

// UseTokenID implements store.TokenIDs. The record is kept until expires,
// and at least a second, by the store's wall clock, as on Redis. Expired ids
// are pruned now and then (on about one write in 256) by the writes
// themselves.
func (s *Store) UseTokenID(ctx context.Context, id, claimant string, expires time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.now()
	expires = later(expires, now.Add(time.Second))
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, tokenIDsBucket)
		if err != nil {
			return err
		}
		if raw := b.Get([]byte(id)); raw != nil {
			var u usedTokenID
			if err := json.Unmarshal(raw, &u); err != nil {
				return err
			}
			if u.Claimant == claimant {
				return nil
			}
			if now.Before(u.Expires) {
				return store.ErrUsed
			}
		}
		if rand.IntN(256) == 0 {
			pruneTokenIDs(b, now)
		}
		raw, err := json.Marshal(usedTokenID{Claimant: claimant, Expires: expires})
		if err != nil {
			return err
		}
		return b.Put([]byte(id), raw)
	})
	if err != nil {
		return fmt.Errorf("use token id: %w", err)
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func pruneTokenIDs(b *bbolt.Bucket, now time.Time) {
	var old [][]byte
	_ = b.ForEach(func(k, v []byte) error {
		var u usedTokenID
		if json.Unmarshal(v, &u) == nil && now.After(u.Expires) {
			old = append(old, bytes.Clone(k))
		}
		return nil
	})
	for _, k := range old {
		_ = b.Delete(k)
	}
}

// GetOrCreateSecret implements store.Secrets.
func (s *Store) GetOrCreateSecret(ctx context.Context, name string, candidate []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []byte
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, secretsBucket)
		if err != nil {
			return err
		}
		if raw := b.Get([]byte(name)); raw != nil {
			out = bytes.Clone(raw)
			return nil
		}
		out = bytes.Clone(candidate)
		return b.Put([]byte(name), out)
	})
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", name, err)
	}
	return out, nil
}

// SwapSecret implements store.Secrets.
func (s *Store) SwapSecret(ctx context.Context, name string, prev, next []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, secretsBucket)
		if err != nil {
			return err
		}
		cur := b.Get([]byte(name))
		switch {
		case cur == nil:
			return store.ErrNotFound
		case bytes.Equal(cur, next):
			return nil
		case !bytes.Equal(cur, prev):
			return store.ErrConflict
		}
		return b.Put([]byte(name), bytes.Clone(next))
	})
	if err != nil {
		return fmt.Errorf("swap secret %q: %w", name, err)
	}
	return nil
}
