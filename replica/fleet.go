package replica

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/ferryhq/ferry/store"
)

// Limits on a selector.
const (
	MaxSelectorTerms = 16
	MaxSelectorBytes = 4096
)

// ParseSelector parses a selector over labels and attributes, in the
// syntax of Kubernetes label selectors: terms joined by ',' must all hold,
// each one of "key=value" (or "=="), "key!=value", "key in (a,b)", "key
// notin (a,b)", "key" (present) and "!key" (absent). A key names a label;
// "attr.<key>" names an attribute (store.AttributePrefix). Keys and values
// follow the syntax of Kubernetes label keys and values. An empty selector
// gives nil (every device).
func ParseSelector(sel string) (labels.Selector, error) {
	if strings.TrimSpace(sel) == "" {
		return nil, nil
	}
	if len(sel) > MaxSelectorBytes {
		return nil, invalid("selector", "is longer than %d bytes", MaxSelectorBytes)
	}
	parsed, err := labels.Parse(sel)
	if err != nil {
		return nil, invalid("selector", "%v", err)
	}
	reqs, _ := parsed.Requirements()
	if len(reqs) > MaxSelectorTerms {
		return nil, invalid("selector", "has %d terms, at most %d allowed", len(reqs), MaxSelectorTerms)
	}
	return parsed, nil
}

// ListQuery returns up to limit devices matching q with ids after after.
func (s *Service) ListQuery(ctx context.Context, q store.Query, after string, limit int) ([]store.Device, error) {
	if err := validateConfig("labels", q.Labels); err != nil {
		return nil, err
	}
	return s.devices.ListDevices(ctx, store.ListOptions{After: after, Limit: limit, Query: q})
}

// setDesiredPage is how many devices SetDesiredMatching reads and writes
// at once.
const setDesiredPage = 1000

// SetDesiredMatching gives every device the selector matches the same new desired
// document (each its own version and job), and returns how many it updated.
// It goes through the fleet page by page, writing each page's devices in one
// batch (store.DesiredBatcher: one transaction, or pipelined scripts), each
// against the desired version the listing read; a device changed meanwhile
// is written again on its own. A failure stops it and reports how many were
// updated before.
func (s *Service) SetDesiredMatching(ctx context.Context, sel labels.Selector, doc Document, setBy string) (int, error) {
	if sel == nil || sel.Empty() {
		return 0, invalid("selector", "is required (an empty selector would match the whole fleet)")
	}
	if err := doc.Validate(); err != nil {
		return 0, err
	}
	updated, after := 0, ""
	for {
		page, err := s.devices.ListDevices(ctx, store.ListOptions{After: after, Limit: setDesiredPage, Query: store.Query{Selector: sel}})
		if err != nil {
			return updated, err
		}
		n, err := s.setDesiredPage(ctx, page, doc, setBy)
		updated += n
		if err != nil {
			return updated, err
		}
		if len(page) < setDesiredPage {
			s.log.InfoContext(ctx, "desired state set on a selector", "selector", sel.String(), "devices", updated, "by", setBy)
			return updated, nil
		}
		after = page[len(page)-1].ID
	}
}

// setDesiredPage writes doc to the listed devices in one batch.
func (s *Service) setDesiredPage(ctx context.Context, page []store.Device, doc Document, setBy string) (int, error) {
	at := s.now().UTC()
	writes := make([]store.DesiredWrite, len(page))
	for i, d := range page {
		next := store.Desired{Version: d.Desired.Version + 1, JobID: newJobID(), Bundle: doc.Bundle, Forced: doc.Forced,
			Config: doc.Config, Consent: doc.Consent, SetBy: setBy, SetAt: at}
		writes[i] = store.DesiredWrite{ID: d.ID, Expect: d.Desired.Version, Desired: next, Write: store.Write{Event: store.Event{
			Time: at, Kind: EventDesiredSet, JobID: next.JobID, DesiredVersion: next.Version,
			Status: string(StatusQueued), Actor: setBy, Message: next.Bundle.TargetPath}}}
	}
	results, err := store.SetDesiredBatch(ctx, s.devices, writes)
	if err != nil {
		return 0, fmt.Errorf("set desired state of %d devices: %w", len(page), err)
	}
	updated := 0
	for i, r := range results {
		id, w := writes[i].ID, writes[i]
		switch {
		case errors.Is(r.Err, store.ErrConflict): // changed since the listing: again on its own
			if _, err := s.SetDesired(ctx, id, doc, setBy, nil); err != nil && !errors.Is(err, store.ErrNotFound) {
				return updated, fmt.Errorf("set desired state of %q after %d devices: %w", id, updated, err)
			}
		case errors.Is(r.Err, store.ErrNotFound): // deleted since the listing
		case r.Err != nil:
			return updated, fmt.Errorf("set desired state of %q after %d devices: %w", id, updated, r.Err)
		default:
			s.log.DebugContext(ctx, "desired state set", "device", id, "version", w.Desired.Version, "job", w.Desired.JobID, "by", setBy)
			s.changed(ctx, id)
		}
		updated++
	}
	return updated, nil
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
