package bolt

import (
	"context"
	"encoding/json"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/ferryhq/ferry/store"
)

// MarkSeen implements store.Devices in one transaction: a later time moves
// the device's LastSeen (and its seen index entry) without changing the
// document's version or appending an event.
func (s *Store) MarkSeen(ctx context.Context, seen []store.Seen) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(devicesBucket)
		for _, m := range seen {
			raw := b.Get([]byte(m.ID))
			if raw == nil || m.At.IsZero() {
				continue
			}
			var dev store.Device
			if err := json.Unmarshal(raw, &dev); err != nil {
				return err
			}
			if !m.At.After(dev.Reported.LastSeen) {
				continue
			}
			old := dev
			dev.Reported.LastSeen = m.At
			out, err := json.Marshal(dev)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(m.ID), out); err != nil {
				return err
			}
			if err := reindex(tx, &old, &dev); err != nil {
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
