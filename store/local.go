package store

import (
	"context"
	"sync"
)

// LocalChanges is Changes within one process, for single-node backends:
// notices are delivered in-process, directly to the subscribers, for the
// devices held here and, while a WatchAll is open, for every device. The
// zero value is ready to use.
type LocalChanges struct {
	mu       sync.Mutex
	subs     map[*func(string)]struct{}
	holds    map[string]struct{}
	watching int
}

// Hold implements Changes.
func (l *LocalChanges) Hold(_ context.Context, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holds == nil {
		l.holds = make(map[string]struct{})
	}
	l.holds[id] = struct{}{}
	return nil
}

// Release implements Changes.
func (l *LocalChanges) Release(_ context.Context, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.holds, id)
	return nil
}

// WatchAll implements Changes. The watch is in place when it returns.
func (l *LocalChanges) WatchAll(context.Context) (func(), error) {
	l.mu.Lock()
	l.watching++
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			l.watching--
			l.mu.Unlock()
		})
	}, nil
}

// PublishChange implements Changes.
func (l *LocalChanges) PublishChange(_ context.Context, ids ...string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		if _, held := l.holds[id]; !held && l.watching == 0 {
			continue
		}
		for fn := range l.subs {
			(*fn)(id)
		}
	}
	return nil
}

// SubscribeChanges implements Changes.
func (l *LocalChanges) SubscribeChanges(ctx context.Context, fn func(id string)) error {
	l.mu.Lock()
	if l.subs == nil {
		l.subs = make(map[*func(string)]struct{})
	}
	l.subs[&fn] = struct{}{}
	l.mu.Unlock()
	fn(AllChanged)
	<-ctx.Done()
	l.mu.Lock()
	delete(l.subs, &fn)
	l.mu.Unlock()
	return nil
}
