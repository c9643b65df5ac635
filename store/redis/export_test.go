package redis

import (
	"context"
	"time"
)

// WaitNotices waits until s has sent every notice its writes queued.
func WaitNotices(s *Store) {
	for {
		s.n.qmu.Lock()
		idle := !s.n.flushing
		s.n.qmu.Unlock()
		if idle {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// Watched reports whether s's writes currently publish to the fleet-wide
// watchers' channel.
func Watched(ctx context.Context, s *Store) bool { return s.watched(ctx) }
