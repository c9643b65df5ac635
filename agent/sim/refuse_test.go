package sim_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/agent/sim"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

// eventually polls cond until it holds, failing after a generous bound.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRefusedDeviceStops: a device revoked while connected is refused by
// ferryd on every attempt; it stops retrying, the fleet says so once, and
// its summary counts connected and refused devices.
func TestRefusedDeviceStops(t *testing.T) {
	w := newWorld(t)
	fl := w.startFleet(t, "refuse", 3, "", sim.Faults{})
	eventually(t, "3 devices connected", func() bool { return fl.Stats.Connected.Load() == 3 })
	if got := fl.Summary(); !strings.HasPrefix(got, "connected=3/3 running=3 refused=0 ") {
		t.Errorf("summary %q", got)
	}

	victim := fl.IDs[1]
	if _, err := w.fleet.RevokeDevice(t.Context(), connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: victim, Reason: "test"})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the revoked device stopped", func() bool { return fl.Stats.Running.Load() == 2 })

	refused := fl.Refused()
	if len(refused) != 1 || refused[0].ID != victim || !errors.Is(refused[0].Err, agent.ErrRefused) {
		t.Fatalf("refused = %+v, want %s only, marked agent.ErrRefused", refused, victim)
	}
	eventually(t, "2 devices connected", func() bool { return fl.Stats.Connected.Load() == 2 })
	if got := fl.Summary(); !strings.HasPrefix(got, "connected=2/3 running=2 refused=1 ") {
		t.Errorf("summary %q", got)
	}
	lines := sim.DescribeRefusals(refused)
	if len(lines) != 1 || !strings.Contains(lines[0], "ferryd refuses 1 device ("+victim+"), which stopped retrying") ||
		!strings.Contains(lines[0], "revoked") {
		t.Errorf("refusal message %q", lines)
	}
	// The other devices go on: they still take a desired state.
	for _, id := range []string{fl.IDs[0], fl.IDs[2]} {
		if _, err := w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id})); err != nil {
			t.Errorf("device %s: %v", id, err)
		}
	}
}

func TestDescribeRefusals(t *testing.T) {
	revoked := errors.New("permission_denied: the device's certificate was revoked")
	unknownCA := errors.New("unavailable: tls: failed to verify certificate")
	var rs []sim.Refusal
	for _, id := range []string{"sim-00007", "sim-00002", "sim-00003", "sim-00001", "sim-00005", "sim-00004", "sim-00006"} {
		rs = append(rs, sim.Refusal{ID: id, Err: revoked})
	}
	rs = append(rs, sim.Refusal{ID: "sim-00009", Err: unknownCA})
	got := sim.DescribeRefusals(rs)
	if len(got) != 2 {
		t.Fatalf("%d lines, want one per reason: %q", len(got), got)
	}
	for i, want := range []string{
		"ferryd refuses 7 devices (sim-00001, sim-00002, sim-00003, sim-00004, sim-00005 and 2 more), which stopped retrying: permission_denied",
		"ferryd refuses 1 device (sim-00009), which stopped retrying: unavailable: tls",
	} {
		if !strings.HasPrefix(got[i], want) {
			t.Errorf("line %d = %q, want prefix %q", i, got[i], want)
		}
	}
}

func TestFormatCounts(t *testing.T) {
	tests := []struct {
		name   string
		counts map[string]uint64
		want   string
	}{
		{"none", nil, "none"},
		{"one", map[string]uint64{"SUCCEEDED": 3}, "SUCCEEDED=3"},
		{"largest first", map[string]uint64{"IN_PROGRESS": 6, "SUCCEEDED": 12, "FAILED": 2}, "SUCCEEDED=12 IN_PROGRESS=6 FAILED=2"},
		{"ties by name", map[string]uint64{"b": 1, "a": 1, "(none)": 1}, "(none)=1 a=1 b=1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := sim.FormatCounts(tc.counts)
			if got != tc.want {
				t.Errorf("FormatCounts(%v) = %q, want %q", tc.counts, got, tc.want)
			}
			if strings.Contains(got, "map[") {
				t.Errorf("map syntax in %q", got)
			}
		})
	}
}
