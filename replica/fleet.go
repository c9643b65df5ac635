package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ferryhq/ferry/store"
)

// MaxSelectorTerms bounds a label selector.
const MaxSelectorTerms = 16

// ParseSelector parses a label selector, "key=value,key2=value2": every
// term must match. Keys and values follow the limits of labels.
func ParseSelector(sel string) (map[string]string, error) {
	if strings.TrimSpace(sel) == "" {
		return nil, nil
	}
	terms := strings.Split(sel, ",")
	if len(terms) > MaxSelectorTerms {
		return nil, invalid("selector", "has %d terms, at most %d allowed", len(terms), MaxSelectorTerms)
	}
	out := make(map[string]string, len(terms))
	for _, term := range terms {
		k, v, ok := strings.Cut(strings.TrimSpace(term), "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, invalid("selector", "term %q is not key=value", term)
		}
		if err := validateConfig("selector", map[string]string{k: v}); err != nil {
			return nil, err
		}
		if strings.ContainsAny(k+v, "=,") {
			return nil, invalid("selector", "term %q has more than one '='", term)
		}
		if prev, dup := out[k]; dup && prev != v {
			return nil, invalid("selector", "key %q is given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

// ListQuery returns up to limit devices matching q with ids after after.
func (s *Service) ListQuery(ctx context.Context, q store.Query, after string, limit int) ([]store.Device, error) {
	if err := validateConfig("labels", q.Labels); err != nil {
		return nil, err
	}
	return s.devices.ListDevices(ctx, store.ListOptions{After: after, Limit: limit, Query: q})
}

// SetDesiredMatching gives every device with the labels the same new desired
// document (each its own version and job), and returns how many it updated.
// It goes through the fleet page by page; a failure stops it and reports
// how many were updated before.
func (s *Service) SetDesiredMatching(ctx context.Context, labels map[string]string, doc Document, setBy string) (int, error) {
	if len(labels) == 0 {
		return 0, invalid("selector", "is required (an empty selector would match the whole fleet)")
	}
	if err := doc.Validate(); err != nil {
		return 0, err
	}
	updated, after := 0, ""
	for {
		page, err := s.devices.ListDevices(ctx, store.ListOptions{After: after, Limit: 500, Query: store.Query{Labels: labels}})
		if err != nil {
			return updated, err
		}
		for _, d := range page {
			if _, err := s.SetDesired(ctx, d.ID, doc, setBy, nil); err != nil && !errors.Is(err, store.ErrNotFound) {
				return updated, fmt.Errorf("set desired state of %q after %d devices: %w", d.ID, updated, err)
			}
			updated++
		}
		if len(page) < 500 {
			return updated, nil
		}
		after = page[len(page)-1].ID
	}
}

// Summary counts the fleet per reported bundle and job status, and the
// devices not seen since silentBefore.
func (s *Service) Summary(ctx context.Context, silentBefore time.Time) (store.Summary, error) {
	return s.devices.Summary(ctx, silentBefore)
}

// Watcher collects the ids of devices that changed, for one reader.
type Watcher struct {
	mu      sync.Mutex
	pending map[string]struct{}
	signal  chan struct{}
	stop    func()
}

// Watch returns a Watcher of every device's changes. Close it when done.
// With a store.Changes shared by instances, the watch makes this instance
// receive the notices of every device (store.Changes.WatchAll) until the
// last Watcher closes: keep watchers to those who need the whole fleet.
func (s *Service) Watch(ctx context.Context) (*Watcher, error) {
	w := &Watcher{pending: make(map[string]struct{}), signal: make(chan struct{}, 1)}
	stopAll := func() {}
	if s.changes != nil {
		var err error
		if stopAll, err = s.changes.WatchAll(ctx); err != nil {
			return nil, fmt.Errorf("watch the fleet: %w", err)
		}
	}
	stopHub := s.hub.watchAll(w.add)
	var once sync.Once
	w.stop = func() { once.Do(func() { stopHub(); stopAll() }) }
	return w, nil
}

func (w *Watcher) add(id string) {
	w.mu.Lock()
	w.pending[id] = struct{}{}
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// Next waits for changes and returns the ids of the devices that changed
// since the last call (each once).
func (w *Watcher) Next(ctx context.Context) ([]string, error) {
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-w.signal:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	ids := make([]string, 0, len(w.pending))
	for id := range w.pending {
		ids = append(ids, id)
	}
	clear(w.pending)
	return ids, nil
}

// Close ends the watch.
func (w *Watcher) Close() { w.stop() }
