package replica

import (
	"testing"

	"github.com/ferryhq/ferry/store"
)

// TestHubAllChanged: AllChanged (notices may have been lost) signals every
// subscription, of every device, and is not passed to fleet-wide watchers;
// a device's notice signals that device's subscriptions only.
func TestHubAllChanged(t *testing.T) {
	var h hub
	h.subs = map[string]map[chan struct{}]struct{}{}
	a, _, _ := h.subscribe("dev-a")
	a2, _, _ := h.subscribe("dev-a")
	b, _, _ := h.subscribe("dev-b")
	var watched []string
	defer h.watchAll(func(id string) { watched = append(watched, id) })()
	pending := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	tests := []struct {
		name        string
		notify      string
		wantSignals [3]bool // a, a2, b
		wantWatched []string
	}{
		{"one device", "dev-b", [3]bool{false, false, true}, []string{"dev-b"}},
		{"all changed", store.AllChanged, [3]bool{true, true, true}, nil},
		{"a device no stream holds", "dev-z", [3]bool{}, []string{"dev-z"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			watched = nil
			h.notify(tt.notify)
			got := [3]bool{pending(a), pending(a2), pending(b)}
			if got != tt.wantSignals {
				t.Errorf("signals (a, a2, b) %v, want %v", got, tt.wantSignals)
			}
			if len(watched) != len(tt.wantWatched) || (len(watched) > 0 && watched[0] != tt.wantWatched[0]) {
				t.Errorf("watchers told %q, want %q", watched, tt.wantWatched)
			}
		})
	}
}
