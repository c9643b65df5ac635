// Package bolt is Ferry's embedded store: one bbolt file on local disk,
// durable and single-node. It is what ferryd uses when no Redis is
// configured.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/ferryhq/ferry/store"
)

// Buckets: devices holds one JSON document per device id; events and
// attestations hold one nested bucket per device id (events keyed by
// big-endian sequence number, attestations by job id).
// index holds "s\x00<status>\x00<id>", "b\x00<bundle>\x00<id>" and
// "l\x00<key>=<value>\x00<id>" (empty values); seen holds
// <big-endian unix nanoseconds><id> (the latest of the reported LastSeen and
// the time MarkSeen recorded in marks, see seen.go); counts holds "s\x00<status>",
// "b\x00<bundle>" and "total" as big-endian uint64. All are kept in the
// transaction that changes the device. The rollout controller's buckets
// (rollouts, executions, leases) are described in rollout.go.
var (
	devicesBucket      = []byte("devices")
	eventsBucket       = []byte("events")
	attestationsBucket = []byte("attestations")
	indexBucket        = []byte("index")
	seenBucket         = []byte("seen")
	countsBucket       = []byte("counts")
)

// Store is a store.Devices on a bbolt file. It is safe for concurrent use.
// Change notices stay in this process (store.LocalChanges): one bbolt file
// serves one ferryd.
type Store struct {
	db  *bbolt.DB
	now func() time.Time
	store.LocalChanges
}

var (
	_ store.Devices = (*Store)(nil)
	_ store.Changes = (*Store)(nil)
)

// Open opens (creating if needed) the database at path. It fails after a
// second if another process holds the file.
func Open(path string) (*Store, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{devicesBucket, eventsBucket, attestationsBucket, indexBucket, seenBucket, countsBucket, marksBucket,
			rolloutsBucket, executionsBucket, leasesBucket} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	return &Store{db: db, now: time.Now}, nil
}

// SetClock sets the wall clock the store keeps enrollments and token ids
// by (time.Now by default; see store.Enrollments). Tests give it their
// test clock. Call it before the store is used.
func (s *Store) SetClock(now func() time.Time) { s.now = now }

// Close closes the database file.
func (s *Store) Close() error { return s.db.Close() }

// CreateDevice implements store.Devices.
func (s *Store) CreateDevice(ctx context.Context, d store.Device) (store.Device, bool, error) {
	if err := ctx.Err(); err != nil {
		return store.Device{}, false, err
	}
	d.Desired.Version, d.Reported.Version = 0, 0
	d.Attributes = nil // written with SetAttributes only
	var (
		stored  store.Device
		created bool
	)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(devicesBucket)
		if raw := b.Get([]byte(d.ID)); raw != nil {
			if err := json.Unmarshal(raw, &stored); err != nil {
				return err
			}
			overlaySeen(tx, &stored)
			return nil
		}
		raw, err := json.Marshal(d)
		if err != nil {
			return err
		}
		stored, created = d, true
		if err := b.Put([]byte(d.ID), raw); err != nil {
			return err
		}
		return reindex(tx, nil, &d)
	})
	if err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: %w", d.ID, err)
	}
	if created {
		s.PublishChange(ctx, d.ID)
	}
	return stored, created, nil
}

// GetDevice implements store.Devices.
func (s *Store) GetDevice(ctx context.Context, id string) (store.Device, error) {
	if err := ctx.Err(); err != nil {
		return store.Device{}, err
	}
	var d store.Device
	err := s.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(devicesBucket).Get([]byte(id))
		if raw == nil {
			return store.ErrNotFound
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			return err
		}
		overlaySeen(tx, &d)
		return nil
	})
	if err != nil {
		return store.Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	return d, nil
}

// SetDesired implements store.Devices.
func (s *Store) SetDesired(ctx context.Context, id string, expect uint64, d store.Desired, w store.Write) (store.Device, error) {
	return s.compareAndSet(ctx, id, expect, d.Version, w, func(dev *store.Device) (cur uint64, same bool) {
		cur = dev.Desired.Version
		same = cur == d.Version && jsonEqual(dev.Desired, d)
		if cur == expect {
			dev.Desired = d
		}
		return cur, same
	})
}

// SetReported implements store.Devices.
func (s *Store) SetReported(ctx context.Context, id string, expect uint64, r store.Reported, w store.Write) (store.Device, error) {
	return s.compareAndSet(ctx, id, expect, r.Version, w, func(dev *store.Device) (cur uint64, same bool) {
		cur = dev.Reported.Version
		same = cur == r.Version && jsonEqual(dev.Reported, r)
		if cur == expect {
			dev.Reported = r
		}
		return cur, same
	})
}

// compareAndSet loads the device, lets apply compare its current version and
// replace the document when it equals expect, and writes the result back.
func (s *Store) compareAndSet(ctx context.Context, id string, expect, next uint64, w store.Write, apply func(*store.Device) (cur uint64, same bool)) (store.Device, error) {
	if err := ctx.Err(); err != nil {
		return store.Device{}, err
	}
	if next != expect+1 {
		return store.Device{}, fmt.Errorf("set device %q: new version %d must be %d+1", id, next, expect)
	}
	var (
		dev   store.Device
		wrote bool
	)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var err error
		dev, wrote, err = casTx(tx, id, expect, w, apply)
		return err
	})
	if err != nil {
		return dev, fmt.Errorf("set device %q: %w", id, err)
	}
	if wrote {
		s.PublishChange(ctx, id) // store.Changes: every write is announced
	}
	return dev, nil
}

// casTx is compareAndSet's work in transaction tx. ErrNotFound and
// ErrConflict come before anything is written; any other error may follow
// a partial write, and must end the transaction.
func casTx(tx *bbolt.Tx, id string, expect uint64, w store.Write, apply func(*store.Device) (cur uint64, same bool)) (dev store.Device, wrote bool, err error) {
	b := tx.Bucket(devicesBucket)
	raw := b.Get([]byte(id))
	if raw == nil {
		return dev, false, store.ErrNotFound
	}
	if err := json.Unmarshal(raw, &dev); err != nil {
		return dev, false, err
	}
	old := dev
	overlaySeen(tx, &old) // as indexed
	cur, same := apply(&dev)
	switch {
	case same:
		overlaySeen(tx, &dev)
		return dev, false, nil // a repeat of a write that already landed
	case cur != expect:
		overlaySeen(tx, &dev)
		return dev, false, fmt.Errorf("%w: version is %d, expected %d", store.ErrConflict, cur, expect)
	}
	out, err := json.Marshal(dev)
	if err != nil {
		return dev, false, err
	}
	if err := b.Put([]byte(id), out); err != nil {
		return dev, false, err
	}
	overlaySeen(tx, &dev)
	if err := reindex(tx, &old, &dev); err != nil {
		return dev, false, err
	}
	if w.Event.Kind != "" {
		if err := appendEvent(tx, id, w.Event); err != nil {
			return dev, false, err
		}
	}
	if a := w.Attestation; a != nil {
		raw, err := json.Marshal(a)
		if err != nil {
			return dev, false, err
		}
		atts, err := tx.Bucket(attestationsBucket).CreateBucketIfNotExists([]byte(id))
		if err != nil {
			return dev, false, err
		}
		if err := atts.Put([]byte(a.JobID), raw); err != nil {
			return dev, false, err
		}
	}
	return dev, true, nil
}

// SetDesiredBatch implements store.DesiredBatcher: every write in one
// transaction (one fsync), announced together.
func (s *Store) SetDesiredBatch(ctx context.Context, writes []store.DesiredWrite) ([]store.DesiredResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]store.DesiredResult, len(writes))
	for _, w := range writes {
		if w.Desired.Version != w.Expect+1 {
			return nil, fmt.Errorf("set device %q: new version %d must be %d+1", w.ID, w.Desired.Version, w.Expect)
		}
	}
	var written []string
	err := s.db.Update(func(tx *bbolt.Tx) error {
		written = written[:0]
		for i, w := range writes {
			d := w.Desired
			dev, wrote, err := casTx(tx, w.ID, w.Expect, w.Write, func(dev *store.Device) (uint64, bool) {
				cur := dev.Desired.Version
				same := cur == d.Version && jsonEqual(dev.Desired, d)
				if cur == w.Expect {
					dev.Desired = d
				}
				return cur, same
			})
			if err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("set device %q: %w", w.ID, err)
			}
			if err != nil {
				err = fmt.Errorf("set device %q: %w", w.ID, err)
			}
			out[i] = store.DesiredResult{Device: dev, Err: err}
			if wrote {
				written = append(written, w.ID)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(written) > 0 {
		s.PublishChange(ctx, written...)
	}
	return out, nil
}

// jsonEqual compares two documents by their stored form, which is what a
// repeated write would have produced.
func jsonEqual(a, b any) bool {
	ra, err1 := json.Marshal(a)
	rb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ra, rb)
}

// appendEvent adds ev to the device's history and drops what is beyond
// store.MaxEvents.
func appendEvent(tx *bbolt.Tx, id string, ev store.Event) error {
	b, err := tx.Bucket(eventsBucket).CreateBucketIfNotExists([]byte(id))
	if err != nil {
		return err
	}
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	ev.Seq = seq
	raw, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if err := b.Put(seqKey(seq), raw); err != nil {
		return err
	}
	if seq > store.MaxEvents {
		c := b.Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= seq-store.MaxEvents; k, _ = c.Next() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
	}
	return nil
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, seq)
}

// ListEvents implements store.Devices.
func (s *Store) ListEvents(ctx context.Context, id string, before uint64, limit int) ([]store.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if limit <= 0 {
		return nil, fmt.Errorf("list events: limit %d must be positive", limit)
	}
	var out []store.Event
	err := s.db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(devicesBucket).Get([]byte(id)) == nil {
			return store.ErrNotFound
		}
		b := tx.Bucket(eventsBucket).Bucket([]byte(id))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		var k, v []byte
		if before == 0 {
			k, v = c.Last()
		} else {
			c.Seek(seqKey(before))
			k, v = c.Prev()
			if k == nil { // Seek went past the end: start from the last
				k, v = c.Last()
				for k != nil && binary.BigEndian.Uint64(k) >= before {
					k, v = c.Prev()
				}
			}
		}
		for ; k != nil && len(out) < limit; k, v = c.Prev() {
			var ev store.Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return err
			}
			out = append(out, ev)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list events of %q: %w", id, err)
	}
	return out, nil
}

// GetAttestation implements store.Devices.
func (s *Store) GetAttestation(ctx context.Context, id, jobID string) (store.Attestation, error) {
	if err := ctx.Err(); err != nil {
		return store.Attestation{}, err
	}
	var a store.Attestation
	err := s.db.View(func(tx *bbolt.Tx) error {
		if tx.Bucket(devicesBucket).Get([]byte(id)) == nil {
			return store.ErrNotFound
		}
		b := tx.Bucket(attestationsBucket).Bucket([]byte(id))
		if b == nil {
			return store.ErrNoAttestation
		}
		raw := b.Get([]byte(jobID))
		if raw == nil {
			return store.ErrNoAttestation
		}
		return json.Unmarshal(raw, &a)
	})
	if err != nil {
		return store.Attestation{}, fmt.Errorf("get attestation of %q job %q: %w", id, jobID, err)
	}
	return a, nil
}
