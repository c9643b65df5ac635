package sim_test

import (
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/agent/sim"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/tuf"
)

// waitAttributes waits until n devices matching selector have reported
// their hardware model in Hello.
func (w *world) waitAttributes(t *testing.T, selector string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := w.fleet.ListDevices(t.Context(), connect.NewRequest(&fleetv1.ListDevicesRequest{
			LabelSelector: selector + ",attr.hardware", PageSize: 1000,
		}))
		if err != nil {
			t.Fatalf("ListDevices: %v", err)
		}
		if got := len(resp.Msg.GetDevices()); got == n {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("%d devices of %q reported their hardware, want %d", got, selector, n)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestRolloutMixedFleet runs a rollout to a fleet of two hardware models
// with a bundle whose signed metadata names only one: the compatible
// devices all update, the others are counted INCOMPATIBLE up front, are
// never given the job (their desired state is untouched) and trip no
// abort rule, and the rollout completes.
func TestRolloutMixedFleet(t *testing.T) {
	w := newWorld(t)
	v2 := w.add(t, "gateway", "2.0.0", 16<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	const nA, nB = 4, 3
	compatible := w.startFleetAs(t, "mixed-a-", "mixed", nA, "gw-a", sim.Faults{})
	other := w.startFleetAs(t, "mixed-b-", "mixed", nB, "gw-b", sim.Faults{})
	w.waitAttributes(t, "fleet=mixed", nA+nB)

	ro := w.createRollout(t, &fleetv1.CreateRolloutRequest{
		Bundle: v2.bundle(), Selector: "fleet=mixed",
		Strategy: &fleetv1.RolloutStrategy{Waves: []*fleetv1.Wave{countWave(1), percentWave(100)}},
		// Any rejection would abort the rollout: devices left out must
		// not count as rejections.
		AbortRules: []*fleetv1.AbortRule{{Status: devicev1.JobStatus_JOB_STATUS_REJECTED, Percent: 1, MinExecutions: 1}},
	})
	seen := w.watchRollout(t, ro.GetId())
	end := seen[len(seen)-1]
	if end.GetState() != "COMPLETED" {
		t.Fatalf("rollout ended %s (%q) with %v, want COMPLETED", end.GetState(), end.GetStateReason(), end.GetCounts())
	}
	if got := end.GetIncompatible(); got != nB {
		t.Errorf("rollout counts %d incompatible devices, want %d (the gw-b devices)", got, nB)
	}
	if got := end.GetCounts()["SUCCEEDED"]; got != nA {
		t.Errorf("rollout counts %d SUCCEEDED, want %d: %v", got, nA, end.GetCounts())
	}
	for status, n := range end.GetCounts() {
		if status != "SUCCEEDED" && status != "INCOMPATIBLE" && n > 0 {
			t.Errorf("rollout counts %d %s, want none: %v", n, status, end.GetCounts())
		}
	}
	var waveIncompatible uint64
	for _, wave := range end.GetWaves() {
		waveIncompatible += wave.GetIncompatible()
	}
	if waveIncompatible != nB {
		t.Errorf("waves count %d incompatible devices in all, want %d", waveIncompatible, nB)
	}
	w.waitRunning(t, compatible.IDs, v2.path)
	execs, err := w.rollouts(t).ListRolloutExecutions(t.Context(), connect.NewRequest(&fleetv1.ListRolloutExecutionsRequest{
		RolloutId: ro.GetId(), Status: "INCOMPATIBLE", PageSize: 100}))
	if err != nil {
		t.Fatalf("ListRolloutExecutions: %v", err)
	}
	var left []string
	for _, e := range execs.Msg.GetExecutions() {
		left = append(left, e.GetDeviceId())
		if e.GetJobId() != "" || e.GetAttempts() != 0 {
			t.Errorf("incompatible %s has job %q after %d attempts", e.GetDeviceId(), e.GetJobId(), e.GetAttempts())
		}
	}
	slices.Sort(left)
	if want := slices.Sorted(slices.Values(other.IDs)); !slices.Equal(left, want) {
		t.Errorf("INCOMPATIBLE executions %v, want the gw-b devices %v", left, want)
	}

	for _, id := range other.IDs {
		r, err := w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id}))
		if err != nil {
			t.Fatalf("GetDevice %s: %v", id, err)
		}
		d := r.Msg.GetDevice()
		if d.GetAttributes()["hardware"] != "gw-b" {
			t.Errorf("%s reports hardware %q, want gw-b", id, d.GetAttributes()["hardware"])
		}
		if v := d.GetDesired().GetVersion(); v != 0 || d.GetDesired().GetSetBy() != "" {
			t.Errorf("%s was given a desired state (version %d, set by %q); an incompatible device must not be", id, v, d.GetDesired().GetSetBy())
		}
		if j := d.GetJob(); j.GetStatus() != devicev1.JobStatus_JOB_STATUS_UNSPECIFIED {
			t.Errorf("%s has a job %v; an incompatible device must never get one", id, j)
		}
		if got := d.GetReported().GetState().GetBundle().GetTargetPath(); got == v2.path {
			t.Errorf("%s runs %s", id, got)
		}
		for _, ev := range w.history(t, id) {
			if k := ev.GetKind(); k == "job_progress" || k == "desired_set" {
				t.Errorf("%s history has a %s event (%v); it was never to be touched", id, k, ev)
			}
		}
	}
}

// TestFleetHardwareInTurn: a comma-separated Hardware gives the devices
// the models in turn, which each reports in Hello.
func TestFleetHardwareInTurn(t *testing.T) {
	w := newWorld(t)
	fl := w.startFleet(t, "turn", 5, "gw-x, gw-y", sim.Faults{})
	w.waitAttributes(t, "fleet=turn,attr.hardware=gw-x", 3)
	w.waitAttributes(t, "fleet=turn,attr.hardware=gw-y", 2)
	for i, id := range fl.IDs {
		r, err := w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id}))
		if err != nil {
			t.Fatal(err)
		}
		if got, want := r.Msg.GetDevice().GetAttributes()["hardware"], []string{"gw-x", "gw-y"}[i%2]; got != want {
			t.Errorf("device %d (%s) reports hardware %q, want %q", i, id, got, want)
		}
	}
}
