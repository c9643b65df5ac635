package store

import (
	"context"
	"sync"
)

// LocalChanges is Changes within one process, for single-node backends.
// The zero value is ready to use.
type LocalChanges struct {
	mu   sync.Mutex
	subs map[*func(string)]struct{}
}

// PublishChange implements Changes.
func (l *LocalChanges) PublishChange(_ context.Context, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for fn := range l.subs {
		(*fn)(id)
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
	<-ctx.Done()
	l.mu.Lock()
	delete(l.subs, &fn)
	l.mu.Unlock()
	return nil
}
