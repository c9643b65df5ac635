package tuf_test

import (
	"testing"
	"time"
)

// TestExpiries checks that every served role, delegated bins included, has
// its expiry, in the future of the repository's clock, and that Now is that
// clock.
func TestExpiries(t *testing.T) {
	e := newEnv(t, 1)
	got := e.repo.Expiries()
	for _, role := range []string{"root", "targets", "snapshot", "timestamp"} {
		at, ok := got[role]
		if !ok || !at.After(e.clock.Now()) {
			t.Errorf("expiry of %s: %v (present: %v), want after %v", role, at, ok, e.clock.Now())
		}
	}
	if len(got) <= 4 {
		t.Errorf("expiries %v: want the delegated bin roles too", got)
	}
	e.clock.Add(time.Hour)
	if !e.repo.Now().Equal(e.clock.Now()) {
		t.Errorf("Now() = %v, want the repository's clock %v", e.repo.Now(), e.clock.Now())
	}
}
