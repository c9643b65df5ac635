package bolt

import (
	"context"

	"go.etcd.io/bbolt"
)

// Ping checks that the database is open and readable.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(*bbolt.Tx) error { return nil })
}
