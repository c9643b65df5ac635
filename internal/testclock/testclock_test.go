package testclock

import (
	"testing"
	"time"
)

func TestStartFollowsTheWallClock(t *testing.T) {
	before := time.Now().Add(Shift()).Truncate(time.Second)
	got := Start()
	after := time.Now().Add(Shift())
	if got.Before(before) || got.After(after) {
		t.Errorf("Start() = %v, want between %v and %v", got, before, after)
	}
	if got.Location() != time.UTC || got.Nanosecond() != 0 {
		t.Errorf("Start() = %v, want UTC whole seconds", got)
	}
	if d := Now().Sub(time.Now()) - Shift(); d < -time.Second || d > time.Second {
		t.Errorf("Now() is %v off the wall clock plus the shift", d)
	}
}

func TestParseShift(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"", 0, false},
		{"8760h", 365 * 24 * time.Hour, false},
		{"-24h", -24 * time.Hour, false},
		{"1y", 0, true},
		{"8760", 0, true},
	}
	for _, tt := range tests {
		got, err := parseShift(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseShift(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}
