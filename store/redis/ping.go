package redis

import "context"

// Ping checks that the Redis server answers.
func (s *Store) Ping(ctx context.Context) error {
	return s.rdb.Ping(ctx).Err()
}
