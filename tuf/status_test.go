package tuf_test

import (
	"testing"
	"time"

	"github.com/ferryhq/ferry/tuf"
)

// TestStatus checks each served role's version, expiry and warnings as the
// repository's clock moves towards the timestamp's expiry and past it.
func TestStatus(t *testing.T) {
	e := newEnv(t, 1)
	expiries := e.repo.Expiries()
	v := e.repo.Versions()
	versions := map[string]int64{"root": v.Root, "targets": v.Targets, "snapshot": v.Snapshot, "timestamp": v.Timestamp}
	tsExpiry := expiries["timestamp"]
	for _, tc := range []struct {
		name string
		at   time.Time
		// soon and expired: the timestamp's flags.
		soon, expired bool
	}{
		{name: "fresh", at: e.clock.Now()},
		{name: "within a quarter of the timestamp's lifetime", at: tsExpiry.Add(-tuf.DefaultTimestampExpiry / 8), soon: true},
		{name: "past the timestamp's expiry", at: tsExpiry.Add(time.Second), soon: true, expired: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.clock.Add(tc.at.Sub(e.clock.Now()))
			got := e.repo.Status()
			if len(got) != len(expiries) {
				t.Fatalf("%d roles, want %d (%v)", len(got), len(expiries), got)
			}
			for i, want := range []string{"root", "targets", "snapshot", "timestamp"} {
				if got[i].Name != want {
					t.Errorf("role %d is %q, want %q", i, got[i].Name, want)
				}
			}
			for i, r := range got[4:] {
				if i > 0 && got[4+i-1].Name >= r.Name {
					t.Errorf("delegated roles not sorted: %q after %q", r.Name, got[4+i-1].Name)
				}
			}
			for _, r := range got {
				if !r.Expires.Equal(expiries[r.Name]) {
					t.Errorf("%s expires %v, want %v", r.Name, r.Expires, expiries[r.Name])
				}
				if want, ok := versions[r.Name]; ok && r.Version != want {
					t.Errorf("%s version %d, want %d", r.Name, r.Version, want)
				}
				if online := r.Name == "snapshot" || r.Name == "timestamp"; r.Online != online {
					t.Errorf("%s online = %v, want %v", r.Name, r.Online, online)
				}
				if r.Name == "timestamp" {
					if r.ExpiresSoon != tc.soon || r.Expired != tc.expired {
						t.Errorf("timestamp: soon %v expired %v, want %v %v", r.ExpiresSoon, r.Expired, tc.soon, tc.expired)
					}
				} else if !r.Online {
					if soon := r.Expires.Sub(tc.at) < tuf.OfflineWarning; r.ExpiresSoon != soon {
						t.Errorf("%s: soon %v, want %v (expires %v, now %v)", r.Name, r.ExpiresSoon, soon, r.Expires, tc.at)
					}
				}
			}
		})
	}
}
