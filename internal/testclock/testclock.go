// Package testclock gives tests the time they start from.
//
// Every test that compares a time with a real clock (a store's key lifetime,
// a certificate's validity, a token's expiry) derives its times from Start,
// never from a calendar date written in the test. The test command runs the
// time-sensitive tests a second time with FERRY_TEST_CLOCK_SHIFT set (for
// example 8760h, one year ahead), so a fixture bound to a date fails on the
// day it is written rather than on a later day.
package testclock

import (
	"fmt"
	"os"
	"time"
)

// ShiftEnv names the environment variable that moves Start: a Go duration
// such as 8760h or -24h.
const ShiftEnv = "FERRY_TEST_CLOCK_SHIFT"

// Start returns the current time moved by FERRY_TEST_CLOCK_SHIFT, with
// nanoseconds kept so that backends which lose precision are caught. It
// panics on a shift that is not a duration: a mistyped shift must not let the
// run pass unshifted.
func Start() time.Time {
	return time.Now().Add(Shift())
}

// Shift returns the duration FERRY_TEST_CLOCK_SHIFT moves the test clock by
// (zero when unset).
func Shift() time.Duration {
	v := os.Getenv(ShiftEnv)
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		panic(fmt.Sprintf("testclock: %s=%q is not a duration: %v", ShiftEnv, v, err))
	}
	return d
}
