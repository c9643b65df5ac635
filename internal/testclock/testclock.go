// Package testclock is the clock of Ferry's tests: every time a test hands
// to a server, a store or a certificate derives from it, never from a fixed
// calendar date.
//
// By default it is the wall clock. FERRY_TEST_CLOCK_SHIFT (a Go duration
// such as 8760h) moves it: the test command runs the time-sensitive tests
// once more a year ahead, so a fixture bound to a date fails the day it is
// written instead of the day its date passes.
package testclock

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// EnvShift names the environment variable that moves the test clock.
const EnvShift = "FERRY_TEST_CLOCK_SHIFT"

var shift = sync.OnceValue(func() time.Duration {
	d, err := parseShift(os.Getenv(EnvShift))
	if err != nil {
		panic("testclock: " + err.Error())
	}
	return d
})

// parseShift reads the value of FERRY_TEST_CLOCK_SHIFT; empty is no shift.
func parseShift(v string) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not a Go duration (for example 8760h): %w", EnvShift, v, err)
	}
	return d, nil
}

// Shift returns how far the test clock runs ahead of the wall clock (0
// unless FERRY_TEST_CLOCK_SHIFT is set). An invalid value panics with a
// message that names the variable.
func Shift() time.Duration { return shift() }

// Now returns the test clock's current time: the wall clock moved by
// Shift. It has the signature of time.Now, to be injected as a clock.
func Now() time.Time { return time.Now().Add(Shift()) }

// Start returns the time a test starts from: Now truncated to the second,
// in UTC, so that fixtures compare and print simply.
func Start() time.Time { return Now().Truncate(time.Second).UTC() }
