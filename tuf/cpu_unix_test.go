//go:build unix

package tuf_test

import (
	"syscall"
	"time"
)

// cpuMeter adds up the process's user and system CPU time over the timed
// parts of a benchmark (an upper bound for the code under test: it
// includes the garbage collector's work on other threads).
type cpuMeter struct {
	total time.Duration
	start time.Duration
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() *cpuMeter   { return &cpuMeter{start: cpuNow()} }
func (c *cpuMeter) pause()  { c.total += cpuNow() - c.start }
func (c *cpuMeter) resume() { c.start = cpuNow() }
func (c *cpuMeter) perOp(n int) float64 {
	c.pause()
	c.start = cpuNow()
	return float64(c.total) / float64(n) / 1e6
}
