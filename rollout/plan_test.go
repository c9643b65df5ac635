package rollout

import (
	"fmt"
	"math"
	"slices"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin without the system's zoneinfo

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/store"
)

func TestWaveSizes(t *testing.T) {
	pct := func(ps ...float64) []store.WaveSpec {
		var out []store.WaveSpec
		for _, p := range ps {
			out = append(out, store.WaveSpec{Percent: p})
		}
		return out
	}
	tests := []struct {
		name  string
		waves []store.WaveSpec
		n     uint64
		want  []uint64
	}{
		{"no waves: one wave of all", nil, 7, []uint64{7}},
		{"no waves and no devices", nil, 0, []uint64{0}},
		{"percents round up", pct(10, 50, 100), 7, []uint64{1, 4, 2}},
		{"exact percents", pct(10, 40, 50), 100, []uint64{10, 40, 50}},
		{"last wave takes the rest", pct(1, 1), 100, []uint64{1, 99}},
		{"last wave takes the rest even when asked for less", []store.WaveSpec{{Count: 1}, {Count: 1}}, 10, []uint64{1, 9}},
		{"counts", []store.WaveSpec{{Count: 1}, {Count: 5}, {Percent: 100}}, 20, []uint64{1, 5, 14}},
		{"counts beyond what is left", []store.WaveSpec{{Count: 3}, {Count: 10}, {Count: 10}}, 5, []uint64{3, 2, 0}},
		{"first count beyond all", []store.WaveSpec{{Count: 10}, {Percent: 50}}, 4, []uint64{4, 0}},
		{"percents beyond what is left", pct(60, 60, 60), 10, []uint64{6, 4, 0}},
		{"no devices with waves", pct(10, 50, 100), 0, []uint64{0, 0, 0}},
		{"one device, tiny first wave", pct(0.1, 100), 1, []uint64{1, 0}},
		{"one wave", []store.WaveSpec{{Count: 2}}, 9, []uint64{9}},
		// Exact in decimal, a hair above in floating point: 250 × 64.4%
		// is 161, and 375 × 8.8% is 33.
		{"float error does not round up", pct(64.4, 100), 250, []uint64{161, 89}},
		{"float error does not round up 2", pct(8.8, 100), 375, []uint64{33, 342}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := waveSizes(store.RolloutSpec{Waves: tt.waves}, tt.n)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("waveSizes(%v, %d) (-want +got):\n%s", tt.waves, tt.n, diff)
			}
			var sum uint64
			for _, s := range got {
				sum += s
			}
			if sum != tt.n {
				t.Errorf("sizes add up to %d, want %d", sum, tt.n)
			}
		})
	}
}

// TestWaveSizesExact checks every percent with two decimals on many fleet
// sizes against exact arithmetic: a wave is never a device bigger than
// asked because of floating point.
func TestWaveSizesExact(t *testing.T) {
	for n := uint64(1); n <= 1000; n += 7 {
		for k := uint64(1); k <= 10000; k += 3 { // percent k/100
			p := float64(k) / 100
			got := waveSizes(store.RolloutSpec{Waves: []store.WaveSpec{{Percent: p}, {Percent: 100}}}, n)
			want := min((n*k+9999)/10000, n) // ceil(n × k / 10000)
			if got[0] != want {
				t.Fatalf("waveSizes(%v%%, %d) first wave = %d, want %d", p, n, got[0], want)
			}
		}
	}
}

func TestShuffle(t *testing.T) {
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%03d", i)
	}
	a := slices.Clone(ids)
	shuffle("r-20261122-213500-1a2b3c", a)
	b := slices.Clone(ids)
	slices.Reverse(b)
	shuffle("r-20261122-213500-1a2b3c", b)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("shuffle depends on the input order (-first +second):\n%s", diff)
	}
	if sorted := slices.Sorted(slices.Values(a)); !slices.Equal(sorted, ids) {
		t.Errorf("shuffle is not a permutation: %v", a)
	}
	if slices.Equal(a, ids) {
		t.Errorf("shuffle kept the id order")
	}
	c := slices.Clone(ids)
	shuffle("r-20261122-213500-ffffff", c)
	if slices.Equal(a, c) {
		t.Errorf("two rollouts shuffle alike")
	}
	if !slices.Equal(slices.Sorted(slices.Values(c)), ids) {
		t.Errorf("shuffle is not a permutation: %v", c)
	}
	var empty []string
	shuffle("r-x", empty) // no panic
	one := []string{"dev-1"}
	shuffle("r-x", one)
	if one[0] != "dev-1" {
		t.Errorf("shuffle of one = %v", one)
	}
}

func TestParseWindowErrors(t *testing.T) {
	tests := []struct {
		name string
		w    store.Window
	}{
		{"empty start", store.Window{Duration: time.Hour}},
		{"no colon", store.Window{Start: "0200", Duration: time.Hour}},
		{"one digit hour", store.Window{Start: "2:00", Duration: time.Hour}},
		{"one digit minute", store.Window{Start: "02:0", Duration: time.Hour}},
		{"seconds", store.Window{Start: "02:00:00", Duration: time.Hour}},
		{"hour 24", store.Window{Start: "24:00", Duration: time.Hour}},
		{"minute 60", store.Window{Start: "02:60", Duration: time.Hour}},
		{"letters", store.Window{Start: "ab:cd", Duration: time.Hour}},
		{"negative hour", store.Window{Start: "-1:00", Duration: time.Hour}},
		{"plus sign hour", store.Window{Start: "+1:30", Duration: time.Hour}},
		{"plus sign minute", store.Window{Start: "01:+5", Duration: time.Hour}},
		{"negative zero", store.Window{Start: "-0:30", Duration: time.Hour}},
		{"spaces", store.Window{Start: " 1:30", Duration: time.Hour}},
		{"zero duration", store.Window{Start: "02:00"}},
		{"negative duration", store.Window{Start: "02:00", Duration: -time.Hour}},
		{"duration above a day", store.Window{Start: "02:00", Duration: 24*time.Hour + time.Second}},
		{"unknown zone", store.Window{Start: "02:00", Duration: time.Hour, Location: "Mars/Olympus"}},
		{"day above Saturday", store.Window{Start: "02:00", Duration: time.Hour, Days: []time.Weekday{7}}},
		{"negative day", store.Window{Start: "02:00", Duration: time.Hour, Days: []time.Weekday{-1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if w, err := parseWindow(tt.w); err == nil {
				t.Errorf("parseWindow(%+v) = %+v, want an error", tt.w, w)
			}
		})
	}
	for _, ok := range []store.Window{
		{Start: "00:00", Duration: 24 * time.Hour},
		{Start: "23:59", Duration: time.Minute, Days: []time.Weekday{time.Sunday, time.Saturday}},
		{Start: "02:30", Duration: time.Hour, Location: "Europe/Berlin"},
		{Start: "02:30", Duration: time.Hour, Location: "UTC"},
	} {
		if _, err := parseWindow(ok); err != nil {
			t.Errorf("parseWindow(%+v) = %v", ok, err)
		}
	}
}

func TestWindowOpen(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	utc := func(s string) time.Time {
		t.Helper()
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	// 2026-11-20 is a Friday; 2026-07-03 is a Friday too.
	tests := []struct {
		name string
		w    store.Window
		at   time.Time
		want bool
	}{
		{"before", store.Window{Start: "02:00", Duration: 2 * time.Hour}, utc("2026-11-20T01:59:59Z"), false},
		{"at start", store.Window{Start: "02:00", Duration: 2 * time.Hour}, utc("2026-11-20T02:00:00Z"), true},
		{"inside", store.Window{Start: "02:00", Duration: 2 * time.Hour}, utc("2026-11-20T03:59:59Z"), true},
		{"at end", store.Window{Start: "02:00", Duration: 2 * time.Hour}, utc("2026-11-20T04:00:00Z"), false},
		{"crosses midnight, evening", store.Window{Start: "22:00", Duration: 4 * time.Hour}, utc("2026-11-20T23:30:00Z"), true},
		{"crosses midnight, after midnight", store.Window{Start: "22:00", Duration: 4 * time.Hour}, utc("2026-11-21T01:30:00Z"), true},
		{"crosses midnight, after the end", store.Window{Start: "22:00", Duration: 4 * time.Hour}, utc("2026-11-21T02:00:00Z"), false},
		{"crosses midnight, before the start", store.Window{Start: "22:00", Duration: 4 * time.Hour}, utc("2026-11-21T21:59:00Z"), false},
		{"whole day", store.Window{Start: "00:00", Duration: 24 * time.Hour}, utc("2026-11-21T13:00:00Z"), true},
		{"days: on Friday", store.Window{Start: "02:00", Duration: 2 * time.Hour, Days: []time.Weekday{time.Friday}}, utc("2026-11-20T03:00:00Z"), true},
		{"days: not on Saturday", store.Window{Start: "02:00", Duration: 2 * time.Hour, Days: []time.Weekday{time.Friday}}, utc("2026-11-21T03:00:00Z"), false},
		{"days: several", store.Window{Start: "02:00", Duration: 2 * time.Hour, Days: []time.Weekday{time.Monday, time.Saturday}}, utc("2026-11-21T03:00:00Z"), true},
		// A window that starts on Friday and runs past midnight is open
		// early on Saturday, and one that starts on Saturday is not open
		// early on Saturday.
		{"days: Friday night into Saturday", store.Window{Start: "22:00", Duration: 4 * time.Hour, Days: []time.Weekday{time.Friday}}, utc("2026-11-21T01:00:00Z"), true},
		{"days: Saturday's window not open before it starts", store.Window{Start: "22:00", Duration: 4 * time.Hour, Days: []time.Weekday{time.Saturday}}, utc("2026-11-21T01:00:00Z"), false},
		{"days: Saturday's window", store.Window{Start: "22:00", Duration: 4 * time.Hour, Days: []time.Weekday{time.Saturday}}, utc("2026-11-21T22:00:00Z"), true},
		// Berlin is UTC+1 in November and UTC+2 in July.
		{"zone: winter, inside", store.Window{Start: "02:00", Duration: time.Hour, Location: "Europe/Berlin"}, utc("2026-11-20T01:30:00Z"), true},
		{"zone: winter, UTC's 02:30 is 03:30 there", store.Window{Start: "02:00", Duration: time.Hour, Location: "Europe/Berlin"}, utc("2026-11-20T02:30:00Z"), false},
		{"zone: summer, inside", store.Window{Start: "02:00", Duration: time.Hour, Location: "Europe/Berlin"}, utc("2026-07-03T00:30:00Z"), true},
		{"zone: summer, outside", store.Window{Start: "02:00", Duration: time.Hour, Location: "Europe/Berlin"}, utc("2026-07-03T01:30:00Z"), false},
		{"zone: the day is Berlin's", store.Window{Start: "00:30", Duration: time.Hour, Location: "Europe/Berlin", Days: []time.Weekday{time.Saturday}}, utc("2026-11-20T23:45:00Z"), true},
		{"zone: time given in another zone", store.Window{Start: "02:00", Duration: time.Hour, Location: "Europe/Berlin"}, time.Date(2026, 11, 20, 2, 15, 0, 0, berlin), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := parseWindow(tt.w)
			if err != nil {
				t.Fatal(err)
			}
			if got := w.open(tt.at); got != tt.want {
				t.Errorf("window %+v open at %v = %v, want %v", tt.w, tt.at, got, tt.want)
			}
			if got := inWindow(store.RolloutSpec{Window: &tt.w}, tt.at); got != tt.want {
				t.Errorf("inWindow at %v = %v, want %v", tt.at, got, tt.want)
			}
		})
	}
	if !inWindow(store.RolloutSpec{}, time.Now()) {
		t.Errorf("no window: not open")
	}
	if inWindow(store.RolloutSpec{Window: &store.Window{Start: "bad"}}, time.Now()) {
		t.Errorf("an invalid window is open")
	}
}

func TestCurrentRate(t *testing.T) {
	tests := []struct {
		name      string
		rate      store.RateSpec
		succeeded uint64
		want      float64
	}{
		{"base", store.RateSpec{PerMinute: 5}, 1000, 5},
		{"factor 1", store.RateSpec{PerMinute: 5, Factor: 1, RaiseAfter: 2}, 1000, 5},
		{"factor without raise_after", store.RateSpec{PerMinute: 5, Factor: 2}, 1000, 5},
		{"before the first raise", store.RateSpec{PerMinute: 5, Factor: 2, RaiseAfter: 10}, 9, 5},
		{"first raise", store.RateSpec{PerMinute: 5, Factor: 2, RaiseAfter: 10}, 10, 10},
		{"between raises", store.RateSpec{PerMinute: 5, Factor: 2, RaiseAfter: 10}, 29, 20},
		{"third raise", store.RateSpec{PerMinute: 5, Factor: 2, RaiseAfter: 10}, 30, 40},
		{"fractional factor", store.RateSpec{PerMinute: 4, Factor: 1.5, RaiseAfter: 1}, 2, 9},
		{"cap", store.RateSpec{PerMinute: 5, Factor: 100, RaiseAfter: 1}, 10, 1e6},
		{"cap without overflow", store.RateSpec{PerMinute: 5, Factor: 100, RaiseAfter: 1}, 1 << 40, 1e6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := currentRate(&tt.rate, tt.succeeded)
			if math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("currentRate(%+v, %d) = %v, want %v", tt.rate, tt.succeeded, got, tt.want)
			}
		})
	}
}

func TestMatches(t *testing.T) {
	d := store.Device{ID: "dev-1", Labels: map[string]string{"ring": "canary", "model": "gw2"}}
	for _, tt := range []struct {
		spec store.RolloutSpec
		want bool
	}{
		{store.RolloutSpec{Labels: map[string]string{"ring": "canary"}}, true},
		{store.RolloutSpec{Labels: map[string]string{"ring": "canary", "model": "gw2"}}, true},
		{store.RolloutSpec{Labels: map[string]string{"ring": "stable"}}, false},
		{store.RolloutSpec{Labels: map[string]string{"site": "x"}}, false},
		{store.RolloutSpec{Devices: []string{"dev-0", "dev-1"}}, true},
		{store.RolloutSpec{Devices: []string{"dev-2"}}, false},
	} {
		if got := matches(tt.spec, d); got != tt.want {
			t.Errorf("matches(%+v) = %v, want %v", tt.spec, got, tt.want)
		}
	}
}
