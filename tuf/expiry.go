package tuf

import (
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Expiries returns when each piece of metadata this instance serves
// expires, by role name: root, timestamp, snapshot, targets and every
// delegated targets role. Roles not loaded yet are absent.
func (r *Repository) Expiries() map[string]time.Time {
	st := r.view.Load()
	out := map[string]time.Time{}
	if st == nil {
		return out
	}
	if st.root != nil {
		out[metadata.ROOT] = st.root.Signed.Expires
	}
	if st.timestamp != nil {
		out[metadata.TIMESTAMP] = st.timestamp.Signed.Expires
	}
	if st.snapshot != nil {
		out[metadata.SNAPSHOT] = st.snapshot.Signed.Expires
	}
	for name, md := range st.roles {
		if md != nil {
			out[name] = md.Signed.Expires
		}
	}
	return out
}

// Now returns the repository's clock: the time its expiries are compared
// with.
func (r *Repository) Now() time.Time { return r.cfg.Now() }
