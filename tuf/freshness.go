package tuf

import (
	"fmt"
	"time"
)

// CheckOnlineExpiry returns nil while the snapshot and timestamp that
// ferryd signs online are unexpired (or none is published yet), and
// otherwise an error naming the role that expired and when. It checks the
// state this instance holds, against the repository's clock; a stopped
// re-signing loop, or keys that no longer match the root, show here before
// devices refuse the metadata.
func (r *Repository) CheckOnlineExpiry() error {
	st := r.view.Load()
	now := r.cfg.Now()
	if st.timestamp != nil && !now.Before(st.timestamp.Signed.Expires) {
		return fmt.Errorf("timestamp version %d expired at %s", st.timestamp.Signed.Version, st.timestamp.Signed.Expires.UTC().Format(time.RFC3339))
	}
	if st.snapshot != nil && !now.Before(st.snapshot.Signed.Expires) {
		return fmt.Errorf("snapshot version %d expired at %s", st.snapshot.Signed.Version, st.snapshot.Signed.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}
