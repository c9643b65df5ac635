//go:build unix

package server

import "syscall"

// descriptorLimit returns this process's limit on open files (the soft
// limit, which the Go runtime raises to the hard one at start).
func descriptorLimit() (int, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	return int(min(rl.Cur, 1<<30)), nil
}
