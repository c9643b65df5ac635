package redis

import (
	"context"
	"fmt"
)

// The TUF repository's change notices. Instances that share a repository
// (its metadata lives in a blob store, not here) tell each other when one
// of them wrote it, so the others re-read it at once rather than at their
// next periodic check. One notice per publish or re-signing, to every
// instance: plain PUBLISH, which a Redis Cluster forwards to every node.

func (s *Store) repositoryChannel() string { return s.prefix + "repository" }

// PublishRepositoryChange tells every ferryd on this Redis that the
// shared TUF repository changed.
func (s *Store) PublishRepositoryChange(ctx context.Context) error {
	if err := s.rdb.Publish(ctx, s.repositoryChannel(), "changed").Err(); err != nil {
		return fmt.Errorf("publish repository change: %w", err)
	}
	return nil
}

// SubscribeRepositoryChanges calls fn for each repository change notice
// until ctx ends. go-redis reconnects a broken subscription by itself;
// notices published meanwhile are lost, which the periodic check covers.
func (s *Store) SubscribeRepositoryChanges(ctx context.Context, fn func()) error {
	sub := s.rdb.Subscribe(ctx, s.repositoryChannel())
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // wait for the subscription
		return fmt.Errorf("subscribe to repository changes: %w", err)
	}
	ch := sub.Channel()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-ch:
			if !ok {
				return nil
			}
			fn()
		}
	}
}
