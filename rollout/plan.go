package rollout

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferryhq/ferry/store"
)

// waveSizes splits n devices into the waves of spec: each wave is a share
// of n (rounded up) or a count, never more than what is left, and the last
// wave takes whatever is left. Without waves there is one wave.
func waveSizes(spec store.RolloutSpec, n uint64) []uint64 {
	if len(spec.Waves) == 0 {
		return []uint64{n}
	}
	sizes := make([]uint64, len(spec.Waves))
	left := n
	for i, w := range spec.Waves {
		size := w.Count
		if w.Count == 0 {
			// Less a hair, so that a share exact in decimal (250 × 64.4%
			// = 161) is not rounded up for its floating-point error.
			share := float64(n) * w.Percent / 100
			size = uint64(math.Ceil(share - share*1e-12))
		}
		if i == len(spec.Waves)-1 || size > left {
			size = left
		}
		sizes[i] = size
		left -= size
	}
	return sizes
}

// shuffle orders device ids by a hash of the rollout id and the device id:
// the same every time for one rollout, and unrelated to how devices are
// named, so that the first wave is a fair sample of the fleet.
func shuffle(rolloutID string, ids []string) {
	key := func(id string) uint64 {
		h := sha256.Sum256([]byte(rolloutID + "\x00" + id))
		return binary.BigEndian.Uint64(h[:8])
	}
	slices.SortFunc(ids, func(a, b string) int {
		ka, kb := key(a), key(b)
		switch {
		case ka < kb:
			return -1
		case ka > kb:
			return 1
		}
		return strings.Compare(a, b)
	})
}

// window is a parsed maintenance window.
type window struct {
	hour, minute int
	length       time.Duration
	days         map[time.Weekday]bool // empty: every day
	loc          *time.Location
}

func parseWindow(w store.Window) (window, error) {
	var out window
	h, m, ok := strings.Cut(w.Start, ":")
	hour, err1 := strconv.Atoi(h)
	minute, err2 := strconv.Atoi(m)
	twoDigits := func(s string) bool { return len(s) == 2 && s[0] >= '0' && s[0] <= '9' && s[1] >= '0' && s[1] <= '9' }
	if !ok || !twoDigits(h) || !twoDigits(m) || err1 != nil || err2 != nil || hour > 23 || minute > 59 {
		return out, fmt.Errorf("start %q is not HH:MM", w.Start)
	}
	if w.Duration <= 0 || w.Duration > 24*time.Hour {
		return out, fmt.Errorf("duration must be above 0 and at most 24h")
	}
	out.loc = time.UTC
	if w.Location == "Local" {
		return out, fmt.Errorf("time zone must be a named zone, not Local (which differs between servers)")
	}
	if w.Location != "" {
		loc, err := time.LoadLocation(w.Location)
		if err != nil {
			return out, fmt.Errorf("time zone %q is unknown", w.Location)
		}
		out.loc = loc
	}
	out.days = map[time.Weekday]bool{}
	for _, d := range w.Days {
		if d < time.Sunday || d > time.Saturday {
			return out, fmt.Errorf("day %d is not a weekday", d)
		}
		out.days[d] = true
	}
	out.hour, out.minute, out.length = hour, minute, w.Duration
	return out, nil
}

// open reports whether the window is open at t. A window that started the
// day before and runs past midnight counts for the day it started.
func (w window) open(t time.Time) bool {
	t = t.In(w.loc)
	for _, back := range []int{0, -1} {
		day := t.AddDate(0, 0, back)
		start := time.Date(day.Year(), day.Month(), day.Day(), w.hour, w.minute, 0, 0, w.loc)
		if (len(w.days) == 0 || w.days[start.Weekday()]) && !t.Before(start) && t.Before(start.Add(w.length)) {
			return true
		}
	}
	return false
}

// inWindow reports whether a rollout may give the job to devices at t.
func inWindow(spec store.RolloutSpec, t time.Time) bool {
	if spec.Window == nil {
		return true
	}
	w, err := parseWindow(*spec.Window)
	return err == nil && w.open(t)
}

// currentRate is the pace of a rate strategy after succeeded successes.
func currentRate(r *store.RateSpec, succeeded uint64) float64 {
	if r.Factor <= 1 || r.RaiseAfter == 0 {
		return min(r.PerMinute, maxRatePerMin)
	}
	steps := float64(succeeded / r.RaiseAfter)
	return min(r.PerMinute*math.Pow(r.Factor, steps), maxRatePerMin)
}

// matches reports whether a device belongs to a rollout's target set.
func matches(spec store.RolloutSpec, d store.Device) bool {
	if len(spec.Devices) > 0 {
		return slices.Contains(spec.Devices, d.ID)
	}
	q, err := spec.TargetQuery()
	return err == nil && q.Match(d)
}
