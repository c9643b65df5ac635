//go:build !unix

package server

// descriptorLimit returns a conservative limit on open connections where
// the system has no RLIMIT_NOFILE.
func descriptorLimit() (int, error) { return 16384, nil }
