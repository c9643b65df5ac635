package replica

import (
	"context"
	"hash/fnv"
	"sync"
	"time"

	"github.com/ferryhq/ferry/store"
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

// notify signals the subscribers of device id; store.AllChanged signals
// every subscriber (notices may have been lost), and is not passed to the
// fleet-wide watchers.
func (h *hub) notify(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if id == store.AllChanged {
		for _, chans := range h.subs {
			for ch := range chans {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
		}
		return
	}
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
// are sent here, and the last one releases it. A failed Hold is logged and the
// caller is told (held is false), and should then read the device now and
// then itself.
//
// When notices may have been lost (store.AllChanged), every subscription
// in this process is signalled.
func (s *Service) Subscribe(ctx context.Context, id string) (changed <-chan struct{}, held bool, cancel func()) {
	mu := s.holds.of(id)
	mu.Lock()
	ch, n, unsubscribe := s.hub.subscribe(id)
	held = true
	if n == 1 && s.changes != nil {
		if err := s.changes.Hold(ctx, id); err != nil {
			s.log.WarnContext(ctx, "hold the device's change notices", "device", id, "err", err)
			held = false
		}
	}
	mu.Unlock()
	var once sync.Once
	return ch, held, func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			if unsubscribe() == 0 && s.changes != nil && !s.leaving.Load() {
				rctx, stop := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer stop()
				if err := s.changes.Release(rctx, id); err != nil {
					s.log.WarnContext(rctx, "release the device's change notices", "device", id, "err", err)
				}
			}
		})
	}
}

// Leave is called when this instance stops: the subscriptions that end
// from then on do not release their devices' holds. A hold left behind is
// what a killed instance leaves: the next instance that holds the device
// takes it over, so releasing tens of thousands of devices one by one would
// only delay the stop.
func (s *Service) Leave() { s.leaving.Store(true) }
