package replica

import (
	"context"
	"hash/fnv"
	"sync"
	"time"
)

// hub fans "device changed" signals out to the streams that watch a device
// in this process.
type hub struct {
	mu       sync.Mutex
	subs     map[string]map[chan struct{}]struct{}
	watchers map[*func(string)]struct{} // told of every device
}

// watchAll calls fn (which must not block) with the id of every device
// that changes, until the returned function is called.
func (h *hub) watchAll(fn func(id string)) func() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.watchers == nil {
		h.watchers = make(map[*func(string)]struct{})
	}
	h.watchers[&fn] = struct{}{}
	return func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.watchers, &fn)
	}
}

// subscribe adds a subscriber of device id and returns its channel, how
// many subscribers the device has now, and a function that removes it and
// returns how many are left.
func (h *hub) subscribe(id string) (<-chan struct{}, int, func() int) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs[id] == nil {
		h.subs[id] = make(map[chan struct{}]struct{})
	}
	h.subs[id][ch] = struct{}{}
	return ch, len(h.subs[id]), func() int {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.subs[id], ch)
		n := len(h.subs[id])
		if n == 0 {
			delete(h.subs, id)
		}
		return n
	}
}

func (h *hub) notify(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for fn := range h.watchers {
		(*fn)(id)
	}
	for ch := range h.subs[id] {
		select {
		case ch <- struct{}{}:
		default: // a signal is already pending
		}
	}
}

// holdLocks serialise, per device, the first subscription's Hold and the
// last one's Release in the store, so that a stream replacing another on
// the same instance never ends up released.
type holdLocks [256]sync.Mutex

func (l *holdLocks) of(id string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(id))
	return &l[h.Sum32()%uint32(len(l))]
}

// Subscribe returns a channel that receives a value whenever device id's
// desired state may have changed, and a function that ends the
// subscription. The channel has a buffer of one: a slow reader misses no
// change, it sees several as one and reads the current state once.
//
// With a store.Changes shared by instances, the first subscription of a
// device in this process holds it (store.Changes.Hold), so that its changes
// are sent here, and the last one releases it. A failed Hold is logged: the
// stream's periodic re-read still finds the change.
func (s *Service) Subscribe(ctx context.Context, id string) (<-chan struct{}, func()) {
	mu := s.holds.of(id)
	mu.Lock()
	ch, n, cancel := s.hub.subscribe(id)
	if n == 1 && s.changes != nil {
		if err := s.changes.Hold(ctx, id); err != nil {
			s.log.WarnContext(ctx, "hold the device's change notices", "device", id, "err", err)
		}
	}
	mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			if cancel() == 0 && s.changes != nil {
				rctx, stop := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer stop()
				if err := s.changes.Release(rctx, id); err != nil {
					s.log.WarnContext(rctx, "release the device's change notices", "device", id, "err", err)
				}
			}
		})
	}
}
