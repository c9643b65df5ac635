package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/ferryhq/ferry/store"
)

// marksBucket holds the last-seen times MarkSeen records, apart from the
// versioned documents: device id -> big-endian unix nanoseconds. The seen
// index holds the latest of a device's mark and its reported LastSeen.
var marksBucket = []byte("marks")

// MarkSeen implements store.Devices in one transaction.
func (s *Store) MarkSeen(ctx context.Context, seen []store.Seen) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(seen) == 0 {
		return nil
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		devices, marks, index := tx.Bucket(devicesBucket), tx.Bucket(marksBucket), tx.Bucket(seenBucket)
		for _, e := range seen {
			raw := devices.Get([]byte(e.ID))
			if raw == nil || e.At.IsZero() {
				continue // unknown devices are ignored
			}
			var d store.Device
			if err := json.Unmarshal(raw, &d); err != nil {
				return fmt.Errorf("decode device %q: %w", e.ID, err)
			}
			overlaySeen(tx, &d)
			if !e.At.After(d.Reported.LastSeen) {
				continue // an earlier time is ignored
			}
			if err := index.Delete(seenKey(&d)); err != nil {
				return err
			}
			d.Reported.LastSeen = e.At
			if err := index.Put(seenKey(&d), nil); err != nil {
				return err
			}
			if err := marks.Put([]byte(e.ID), binary.BigEndian.AppendUint64(nil, uint64(e.At.UnixNano()))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark seen: %w", err)
	}
	return nil
}

// overlaySeen makes d's LastSeen the latest of its own and its mark.
func overlaySeen(tx *bbolt.Tx, d *store.Device) {
	v := tx.Bucket(marksBucket).Get([]byte(d.ID))
	if len(v) != 8 {
		return
	}
	if t := time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC(); t.After(d.Reported.LastSeen) {
		d.Reported.LastSeen = t
	}
}
