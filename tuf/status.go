package tuf

import (
	"cmp"
	"slices"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// OfflineWarning is how long before its expiry an offline role (root,
// targets, delegated targets) is reported as expiring soon: the time people
// have to sign a new version.
const OfflineWarning = 30 * 24 * time.Hour

// RoleStatus is one role's metadata as this instance serves it.
type RoleStatus struct {
	Name    string
	Version int64
	Expires time.Time
	// Online: ferryd signs the role (snapshot, timestamp) and renews it
	// before it expires.
	Online bool
	// ExpiresSoon: the role expires within its warning period, a quarter
	// of its lifetime for online roles (ferryd should have renewed it by
	// then) and OfflineWarning for offline roles.
	ExpiresSoon bool
	// Expired: the repository's clock is at or past Expires.
	Expired bool
}

// Status returns every role this instance serves: root, targets, snapshot,
// timestamp, then the delegated targets roles by name. Roles not loaded yet
// are absent.
func (r *Repository) Status() []RoleStatus {
	st := r.view.Load()
	if st == nil {
		return nil
	}
	now := r.cfg.Now()
	var out []RoleStatus
	add := func(name string, version int64, expires time.Time, online bool, lifetime time.Duration) {
		warn := OfflineWarning
		if online {
			warn = lifetime / 4
		}
		out = append(out, RoleStatus{
			Name: name, Version: version, Expires: expires, Online: online,
			ExpiresSoon: expires.Sub(now) < warn, Expired: !now.Before(expires),
		})
	}
	if st.root != nil {
		add(metadata.ROOT, st.root.Signed.Version, st.root.Signed.Expires, false, 0)
	}
	if md := st.roles[metadata.TARGETS]; md != nil {
		add(metadata.TARGETS, md.Signed.Version, md.Signed.Expires, false, 0)
	}
	if st.snapshot != nil {
		add(metadata.SNAPSHOT, st.snapshot.Signed.Version, st.snapshot.Signed.Expires, true, r.cfg.SnapshotExpiry)
	}
	if st.timestamp != nil {
		add(metadata.TIMESTAMP, st.timestamp.Signed.Version, st.timestamp.Signed.Expires, true, r.cfg.TimestampExpiry)
	}
	top := len(out)
	for name, md := range st.roles {
		if name != metadata.TARGETS && md != nil {
			add(name, md.Signed.Version, md.Signed.Expires, false, 0)
		}
	}
	slices.SortFunc(out[top:], func(a, b RoleStatus) int { return cmp.Compare(a.Name, b.Name) })
	return out
}
