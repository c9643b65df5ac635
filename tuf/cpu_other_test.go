//go:build !unix

package tuf_test

import "time"

// cpuMeter falls back to wall time where getrusage is missing.
type cpuMeter struct {
	total time.Duration
	start time.Time
}

func startCPU() *cpuMeter   { return &cpuMeter{start: time.Now()} }
func (c *cpuMeter) pause()  { c.total += time.Since(c.start) }
func (c *cpuMeter) resume() { c.start = time.Now() }
func (c *cpuMeter) perOp(n int) float64 {
	c.pause()
	c.start = time.Now()
	return float64(c.total) / float64(n) / 1e6
}
