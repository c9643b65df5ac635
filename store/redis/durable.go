package redis

import "time"

// SetMinReplicas makes every acknowledged write of a device or a rollout
// wait until n replicas of the master that took it have acknowledged it too
// (Redis WAIT), for at most timeout; n = 0, the default, does not wait.
// Call it before the store is used.
func (s *Store) SetMinReplicas(n int, timeout time.Duration) {
	if timeout <= 0 {
		timeout = time.Second
	}
	s.minReplicas, s.waitTimeout = max(n, 0), timeout
}
