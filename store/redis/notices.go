package redis

import "context"

// notify announces that device id changed, after the write that changed
// it, to the ferryd instance holder that holds its stream ("" if none).
// This version publishes on the one changes channel that every instance
// subscribes to (PublishChange); the notice is best effort, so a failure
// to publish does not fail the write.
func (s *Store) notify(ctx context.Context, holder, id string) {
	_ = holder
	_ = s.PublishChange(ctx, id)
}
