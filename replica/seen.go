package replica

import (
	"context"
	"sync"
	"time"

	"github.com/ferryhq/ferry/store"
)

// seenBuffer holds the last-seen times not written yet: one entry per
// device, the latest time.
type seenBuffer struct {
	mu      sync.Mutex
	pending map[string]time.Time
}

func (b *seenBuffer) add(id string, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending == nil {
		b.pending = make(map[string]time.Time)
	}
	if prev, ok := b.pending[id]; !ok || at.After(prev) {
		b.pending[id] = at
	}
}

// take empties the buffer and returns what it held.
func (b *seenBuffer) take() []store.Seen {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]store.Seen, 0, len(b.pending))
	for id, at := range b.pending {
		out = append(out, store.Seen{ID: id, At: at})
	}
	clear(b.pending)
	return out
}

// Flush writes the last-seen times collected since the last flush, in one
// store.Devices.MarkSeen call. On failure the times stay buffered for the
// next flush (unless a later time came meanwhile).
func (s *Service) Flush(ctx context.Context) error {
	batch := s.seen.take()
	if len(batch) == 0 {
		return nil
	}
	if err := s.devices.MarkSeen(ctx, batch); err != nil {
		for _, e := range batch {
			s.seen.add(e.ID, e.At)
		}
		return err
	}
	return nil
}

// flushLoop flushes every SeenFlush until ctx ends, and once more after.
func (s *Service) flushLoop(ctx context.Context) {
	tick := time.NewTicker(s.seenFlush)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if err := s.Flush(ctx); err != nil && ctx.Err() == nil {
				s.log.WarnContext(ctx, "write last-seen times; retrying at the next flush", "err", err)
			}
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if err := s.Flush(fctx); err != nil {
				s.log.WarnContext(fctx, "write the last last-seen times", "err", err)
			}
			return
		}
	}
}
