// Package bolt is Ferry's embedded store: one bbolt file on local disk,
// durable and single-node. It is what ferryd uses when no Redis is
// configured.
package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/ferryhq/ferry/store"
)

var devicesBucket = []byte("devices")

// Store is a store.Devices on a bbolt file. It is safe for concurrent use.
type Store struct {
	db *bbolt.DB
}

var _ store.Devices = (*Store)(nil)

// Open opens (creating if needed) the database at path. It fails after a
// second if another process holds the file.
func Open(path string) (*Store, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(devicesBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the database file.
func (s *Store) Close() error { return s.db.Close() }

// CreateDevice implements store.Devices.
func (s *Store) CreateDevice(ctx context.Context, d store.Device) (store.Device, bool, error) {
	if err := ctx.Err(); err != nil {
		return store.Device{}, false, err
	}
	d.Desired.Version, d.Reported.Version = 0, 0
	var (
		stored  store.Device
		created bool
	)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(devicesBucket)
		if raw := b.Get([]byte(d.ID)); raw != nil {
			return json.Unmarshal(raw, &stored)
		}
		raw, err := json.Marshal(d)
		if err != nil {
			return err
		}
		stored, created = d, true
		return b.Put([]byte(d.ID), raw)
	})
	if err != nil {
		return store.Device{}, false, fmt.Errorf("create device %q: %w", d.ID, err)
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
		return json.Unmarshal(raw, &d)
	})
	if err != nil {
		return store.Device{}, fmt.Errorf("get device %q: %w", id, err)
	}
	return d, nil
}

// ListDevices implements store.Devices.
func (s *Store) ListDevices(ctx context.Context, opts store.ListOptions) ([]store.Device, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.Limit <= 0 {
		return nil, fmt.Errorf("list devices: limit %d must be positive", opts.Limit)
	}
	var out []store.Device
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(devicesBucket).Cursor()
		k, v := c.Seek([]byte(opts.After))
		if k != nil && opts.After != "" && bytes.Equal(k, []byte(opts.After)) {
			k, v = c.Next()
		}
		for ; k != nil && len(out) < opts.Limit; k, v = c.Next() {
			var d store.Device
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("decode device %q: %w", k, err)
			}
			out = append(out, d)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// SetDesired implements store.Devices.
func (s *Store) SetDesired(ctx context.Context, id string, expect uint64, d store.Desired) (store.Device, error) {
	return s.compareAndSet(ctx, id, expect, d.Version, func(dev *store.Device) (cur uint64, same bool) {
		cur = dev.Desired.Version
		same = cur == d.Version && jsonEqual(dev.Desired, d)
		if cur == expect {
			dev.Desired = d
		}
		return cur, same
	})
}

// SetReported implements store.Devices.
func (s *Store) SetReported(ctx context.Context, id string, expect uint64, r store.Reported) (store.Device, error) {
	return s.compareAndSet(ctx, id, expect, r.Version, func(dev *store.Device) (cur uint64, same bool) {
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
func (s *Store) compareAndSet(ctx context.Context, id string, expect, next uint64, apply func(*store.Device) (cur uint64, same bool)) (store.Device, error) {
	if err := ctx.Err(); err != nil {
		return store.Device{}, err
	}
	if next != expect+1 {
		return store.Device{}, fmt.Errorf("set device %q: new version %d must be %d+1", id, next, expect)
	}
	var dev store.Device
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(devicesBucket)
		raw := b.Get([]byte(id))
		if raw == nil {
			return store.ErrNotFound
		}
		if err := json.Unmarshal(raw, &dev); err != nil {
			return err
		}
		cur, same := apply(&dev)
		switch {
		case same:
			return nil // a repeat of a write that already landed
		case cur != expect:
			return fmt.Errorf("%w: version is %d, expected %d", store.ErrConflict, cur, expect)
		}
		out, err := json.Marshal(dev)
		if err != nil {
			return err
		}
		return b.Put([]byte(id), out)
	})
	if err != nil {
		return dev, fmt.Errorf("set device %q: %w", id, err)
	}
	return dev, nil
}

// jsonEqual compares two documents by their stored form, which is what a
// repeated write would have produced.
func jsonEqual(a, b any) bool {
	ra, err1 := json.Marshal(a)
	rb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ra, rb)
}
