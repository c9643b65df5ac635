package agent

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Window is a device-side maintenance window: a daily span in which the
// agent installs (and applies configuration); outside it a job waits,
// reported as StepAwaitingConsent. The zero Days means every day.
type Window struct {
	// Start is the time of day the window opens, as an offset from
	// midnight in Location.
	Start    time.Duration
	Duration time.Duration
	// Days the window opens on (empty: every day).
	Days     []time.Weekday
	Location *time.Location
	spec     string
}

var weekdays = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// ParseWindow parses "HH:MM/DURATION[/DAYS][@ZONE]": the window opens at
// HH:MM for DURATION (Go syntax, at most 24h), on DAYS (comma-separated
// days and ranges, "mon-fri,sun"; absent: every day), in the IANA time
// zone ZONE (absent: UTC). For example "02:00/3h/mon-fri@Europe/Berlin".
func ParseWindow(s string) (*Window, error) {
	w := &Window{Location: time.UTC, spec: s}
	rest := s
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		loc, err := time.LoadLocation(rest[i+1:])
		if err != nil || rest[i+1:] == "" {
			return nil, fmt.Errorf("maintenance window %q: unknown time zone %q", s, rest[i+1:])
		}
		w.Location, rest = loc, rest[:i]
	}
	parts := strings.Split(rest, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, fmt.Errorf("maintenance window %q: want HH:MM/DURATION[/DAYS][@ZONE]", s)
	}
	hh, mm, ok := strings.Cut(parts[0], ":")
	h, err1 := strconv.Atoi(hh)
	m, err2 := strconv.Atoi(mm)
	if !ok || err1 != nil || err2 != nil || h < 0 || h > 23 || m < 0 || m > 59 || len(mm) != 2 {
		return nil, fmt.Errorf("maintenance window %q: start %q is not HH:MM", s, parts[0])
	}
	w.Start = time.Duration(h)*time.Hour + time.Duration(m)*time.Minute
	d, err := time.ParseDuration(parts[1])
	if err != nil || d <= 0 || d > 24*time.Hour {
		return nil, fmt.Errorf("maintenance window %q: duration %q must be between 1s and 24h", s, parts[1])
	}
	w.Duration = d
	if len(parts) == 3 {
		seen := map[time.Weekday]bool{}
		for term := range strings.SplitSeq(parts[2], ",") {
			from, to, isRange := strings.Cut(strings.ToLower(strings.TrimSpace(term)), "-")
			a, okA := weekdays[from]
			b, okB := weekdays[to]
			if !okA || isRange && !okB {
				return nil, fmt.Errorf("maintenance window %q: day %q is not mon..sun or a range like mon-fri", s, term)
			}
			if !isRange {
				b = a
			}
			for day := a; ; day = (day + 1) % 7 {
				if !seen[day] {
					seen[day] = true
					w.Days = append(w.Days, day)
				}
				if day == b {
					break
				}
			}
		}
	}
	return w, nil
}

// String returns the window as it was parsed.
func (w *Window) String() string { return w.spec }

func (w *Window) on(day time.Weekday) bool {
	if len(w.Days) == 0 {
		return true
	}
	for _, d := range w.Days {
		if d == day {
			return true
		}
	}
	return false
}

// Next reports whether the window is open at now and, when it is not,
// when it opens next.
func (w *Window) Next(now time.Time) (open bool, opens time.Time) {
	local := now.In(w.Location)
	midnight := time.Date(local.Year(), local.Month(), local.Day(), 0, 0, 0, 0, w.Location)
	for offset := -1; offset <= 7; offset++ {
		day := midnight.AddDate(0, 0, offset)
		start := time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, w.Location).Add(w.Start)
		if !w.on(day.Weekday()) {
			continue
		}
		if !now.Before(start) && now.Before(start.Add(w.Duration)) {
			return true, time.Time{}
		}
		if start.After(now) {
			return false, start
		}
	}
	return false, now.Add(24 * time.Hour) // no day allowed: unreachable with a parsed window
}
