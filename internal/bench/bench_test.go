package bench

import (
	"bytes"
	"context"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	RunRole() // the bench's own server processes run this test binary
	os.Exit(m.Run())
}

// TestSmoke runs every scenario at tiny sizes against the real binaries
// and peers, so the bench cannot rot: every scenario must give its rows,
// each with a positive, finite figure and, where it has one, a peer's.
// The figures themselves are not judged here (performance is measured by
// running the bench, not by tests).
func TestSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var log bytes.Buffer
	res, err := Run(ctx, Options{Short: true, Devices: 60, FanoutDevices: 40, BundleBytes: 2 << 20, Log: &log})
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, log.String())
	}
	want := map[string]int{"streams": 3, "reconnect": 4, "fanout": 3, "reports": 3, "downloads": 2}
	got := map[string]int{}
	for _, r := range res.Rows {
		got[r.Scenario]++
		if !(r.Ferry > 0) || math.IsInf(r.Ferry, 0) {
			t.Errorf("%s %q: Ferry's figure is %v", r.Scenario, r.What, r.Ferry)
		}
		if r.Peer != "" && (!(r.PeerValue > 0) || math.IsInf(r.PeerValue, 0)) {
			t.Errorf("%s %q: %s's figure is %v", r.Scenario, r.What, r.Peer, r.PeerValue)
		}
		if r.Target != "" && r.Met == "" {
			t.Errorf("%s %q: a target without a verdict", r.Scenario, r.What)
		}
	}
	for s, n := range want {
		if got[s] != n {
			t.Errorf("scenario %s: %d rows, want %d", s, got[s], n)
		}
	}
	var table bytes.Buffer
	res.Print(&table)
	for s := range want {
		if !strings.Contains(table.String(), "| "+s) {
			t.Errorf("the printed table has no %s row:\n%s", s, table.String())
		}
	}
	t.Logf("smoke run in %s:\n%s", res.Elapsed.Round(time.Millisecond), table.String())
}

func TestOptionsRefuseUnknownScenario(t *testing.T) {
	_, err := Run(context.Background(), Options{Scenarios: []string{"streams", "nonsense"}})
	if err == nil || !strings.Contains(err.Error(), `unknown scenario "nonsense"`) {
		t.Fatalf("err = %v, want the unknown scenario named", err)
	}
}

func TestFormat(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		unit string
		want string
	}{
		{19000, "/s", "19,000 /s"},
		{1234567, "B", "1,234,567 B"},
		{42.25, "KiB", "42.2 KiB"},
		{3.14159, "s", "3.14 s"},
		{math.NaN(), "s", "n/a"},
	} {
		if got := format(tt.v, tt.unit); got != tt.want {
			t.Errorf("format(%v, %q) = %q, want %q", tt.v, tt.unit, got, tt.want)
		}
	}
	if got := atMost(50, 40, "KiB"); got != "missed by 10.0 KiB (25% over)" {
		t.Errorf("atMost = %q", got)
	}
	if got := atLeast(5000, 10000, "/s"); got != "missed by 5,000 /s (50% short)" {
		t.Errorf("atLeast = %q", got)
	}
	if atMost(1, 2, "s") != "met" || atLeast(2, 1, "s") != "met" {
		t.Error("met targets not said so")
	}
}
