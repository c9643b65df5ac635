package replica

import "sync"

// hub fans "device changed" signals out to the streams that watch a device.
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

func (h *hub) subscribe(id string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.subs[id] == nil {
		h.subs[id] = make(map[chan struct{}]struct{})
	}
	h.subs[id][ch] = struct{}{}
	h.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			delete(h.subs[id], ch)
			if len(h.subs[id]) == 0 {
				delete(h.subs, id)
			}
		})
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
