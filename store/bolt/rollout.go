package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/ferryhq/ferry/store"
)

// Buckets of the rollout controller: rollouts holds one JSON document per
// rollout id; executions one nested bucket per rollout id (device id ->
// execution JSON); leases one JSON lease per name. A lease's record is
// never deleted: releasing it clears the holder and keeps the last fencing
// token, so the next token is always greater.
var (
	rolloutsBucket   = []byte("rollouts")
	executionsBucket = []byte("executions")
	leasesBucket     = []byte("leases")
)

var (
	_ store.Rollouts = (*Store)(nil)
	_ store.Leases   = (*Store)(nil)
)

// lease is the stored form of a lease. Holder is empty when nobody holds
// it; Fence is the last token issued under its name.
type lease struct {
	Holder  string    `json:"holder,omitempty"`
	Fence   uint64    `json:"fence"`
	Expires time.Time `json:"expires,omitzero"`
}

// held reports whether the lease has a holder at now.
func (l lease) held(now time.Time) bool {
	return l.Holder != "" && now.Before(l.Expires)
}

func getLease(tx *bbolt.Tx, name string) (lease, error) {
	var l lease
	raw := tx.Bucket(leasesBucket).Get([]byte(name))
	if raw == nil {
		return l, nil
	}
	if err := json.Unmarshal(raw, &l); err != nil {
		return l, fmt.Errorf("decode lease %q: %w", name, err)
	}
	return l, nil
}

func putLease(tx *bbolt.Tx, name string, l lease) error {
	raw, err := json.Marshal(l)
	if err != nil {
		return err
	}
	return tx.Bucket(leasesBucket).Put([]byte(name), raw)
}

// checkFence fails with store.ErrFenced unless fence is 0 or the current
// token of the held store.RolloutLease.
func checkFence(tx *bbolt.Tx, fence uint64) error {
	if fence == 0 {
		return nil
	}
	l, err := getLease(tx, store.RolloutLease)
	if err != nil {
		return err
	}
	if !l.held(time.Now()) || l.Fence != fence {
		return fmt.Errorf("%w: token %d, lease %q has %d", store.ErrFenced, fence, store.RolloutLease, l.Fence)
	}
	return nil
}

// CreateRollout implements store.Rollouts. Repeating a create that already
// succeeded (the stored document is still that version 1, byte for byte)
// succeeds without writing.
func (s *Store) CreateRollout(ctx context.Context, r store.Rollout) (store.Rollout, error) {
	if err := ctx.Err(); err != nil {
		return store.Rollout{}, err
	}
	if r.ID == "" {
		return store.Rollout{}, errors.New("create rollout: empty id")
	}
	r.Version = 1
	raw, err := json.Marshal(r)
	if err != nil {
		return store.Rollout{}, fmt.Errorf("create rollout %q: %w", r.ID, err)
	}
	var stored store.Rollout
	err = s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(rolloutsBucket)
		if cur := b.Get([]byte(r.ID)); cur != nil {
			if bytes.Equal(cur, raw) {
				stored = r
				return nil // a repeat of this create
			}
			if err := json.Unmarshal(cur, &stored); err != nil {
				return err
			}
			return store.ErrExists
		}
		stored = r
		return b.Put([]byte(r.ID), raw)
	})
	if err != nil {
		return stored, fmt.Errorf("create rollout %q: %w", r.ID, err)
	}
	return stored, nil
}

// GetRollout implements store.Rollouts.
func (s *Store) GetRollout(ctx context.Context, id string) (store.Rollout, error) {
	if err := ctx.Err(); err != nil {
		return store.Rollout{}, err
	}
	var r store.Rollout
	err := s.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(rolloutsBucket).Get([]byte(id))
		if raw == nil {
			return store.ErrNotFound
		}
		return json.Unmarshal(raw, &r)
	})
	if err != nil {
		return store.Rollout{}, fmt.Errorf("get rollout %q: %w", id, err)
	}
	return r, nil
}

// ListRollouts implements store.Rollouts. limit must be positive.
func (s *Store) ListRollouts(ctx context.Context, before string, limit int) ([]store.Rollout, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, fmt.Errorf("list rollouts: limit %d must be positive", limit)
	}
	out := []store.Rollout{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(rolloutsBucket).Cursor()
		var k, v []byte
		if before == "" {
			k, v = c.Last()
		} else if k, _ = c.Seek([]byte(before)); k == nil {
			k, v = c.Last() // every id is below before
		} else {
			k, v = c.Prev() // Seek stopped at the first id >= before
		}
		for ; k != nil && len(out) < limit; k, v = c.Prev() {
			var r store.Rollout
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decode %q: %w", k, err)
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list rollouts: %w", err)
	}
	return out, nil
}

// UpdateRollout implements store.Rollouts.
func (s *Store) UpdateRollout(ctx context.Context, expect uint64, r store.Rollout, fence uint64) (store.Rollout, error) {
	if err := ctx.Err(); err != nil {
		return store.Rollout{}, err
	}
	if r.Version != expect+1 {
		return store.Rollout{}, fmt.Errorf("update rollout %q: new version %d must be %d+1", r.ID, r.Version, expect)
	}
	raw, err := json.Marshal(r)
	if err != nil {
		return store.Rollout{}, fmt.Errorf("update rollout %q: %w", r.ID, err)
	}
	var stored store.Rollout
	err = s.db.Update(func(tx *bbolt.Tx) error {
		if err := checkFence(tx, fence); err != nil {
			return err
		}
		b := tx.Bucket(rolloutsBucket)
		cur := b.Get([]byte(r.ID))
		if cur == nil {
			return store.ErrNotFound
		}
		if bytes.Equal(cur, raw) {
			stored = r
			return nil // a repeat of a write that already landed
		}
		if err := json.Unmarshal(cur, &stored); err != nil {
			return err
		}
		if stored.Version != expect {
			return fmt.Errorf("%w: version is %d, expected %d", store.ErrConflict, stored.Version, expect)
		}
		stored = r
		return b.Put([]byte(r.ID), raw)
	})
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			return stored, fmt.Errorf("update rollout %q: %w", r.ID, err)
		}
		return store.Rollout{}, fmt.Errorf("update rollout %q: %w", r.ID, err)
	}
	return stored, nil
}

// PutExecutions implements store.Rollouts. The rollout must exist
// (store.ErrNotFound otherwise).
func (s *Store) PutExecutions(ctx context.Context, rolloutID string, fence uint64, execs []store.Execution) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	raws := make([][]byte, len(execs))
	for i, e := range execs {
		if e.DeviceID == "" {
			return fmt.Errorf("put executions of %q: execution %d has no device id", rolloutID, i)
		}
		raw, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("put executions of %q: %w", rolloutID, err)
		}
		raws[i] = raw
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		if err := checkFence(tx, fence); err != nil {
			return err
		}
		if tx.Bucket(rolloutsBucket).Get([]byte(rolloutID)) == nil {
			return store.ErrNotFound
		}
		b, err := tx.Bucket(executionsBucket).CreateBucketIfNotExists([]byte(rolloutID))
		if err != nil {
			return err
		}
		for i, e := range execs {
			if err := b.Put([]byte(e.DeviceID), raws[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("put executions of %q: %w", rolloutID, err)
	}
	return nil
}

// ListExecutions implements store.Rollouts.
func (s *Store) ListExecutions(ctx context.Context, rolloutID string) ([]store.Execution, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := []store.Execution{}
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(executionsBucket).Bucket([]byte(rolloutID))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var e store.Execution
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode %q: %w", k, err)
			}
			out = append(out, e)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list executions of %q: %w", rolloutID, err)
	}
	return out, nil
}

// AcquireLease implements store.Leases. Expiry follows this process's
// clock: one bbolt file serves one ferryd.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if holder == "" || ttl <= 0 {
		return 0, fmt.Errorf("acquire lease %q: need a holder and a positive ttl", name)
	}
	var fence uint64
	err := s.db.Update(func(tx *bbolt.Tx) error {
		l, err := getLease(tx, name)
		if err != nil {
			return err
		}
		now := time.Now()
		switch {
		case l.held(now) && l.Holder != holder:
			return store.ErrLeaseHeld
		case !l.held(now): // free or lapsed: a new token
			l.Fence++
			l.Holder = holder
		}
		l.Expires = now.Add(ttl)
		fence = l.Fence
		return putLease(tx, name, l)
	})
	if err != nil {
		return 0, fmt.Errorf("acquire lease %q: %w", name, err)
	}
	return fence, nil
}

// ReleaseLease implements store.Leases.
func (s *Store) ReleaseLease(ctx context.Context, name, holder string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		l, err := getLease(tx, name)
		if err != nil {
			return err
		}
		if l.Holder != holder || !l.held(time.Now()) {
			return nil
		}
		return putLease(tx, name, lease{Fence: l.Fence})
	})
	if err != nil {
		return fmt.Errorf("release lease %q: %w", name, err)
	}
	return nil
}
