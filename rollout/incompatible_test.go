package rollout

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/ferryhq/ferry/inventory"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

// TestControllerIncompatible checks that the devices the bundle's signed
// hardware list leaves out are counted INCOMPATIBLE up front, never given
// the job, and trip no abort rule, while the others update; a device that
// reports no hardware model is left to decide for itself.
func TestControllerIncompatible(t *testing.T) {
	// The fleet: two of each model and one that reports none.
	fleet := map[string]string{"a-0": "gw-a", "a-1": "gw-a", "b-0": "gw-b", "b-1": "gw-b", "none": ""}
	for _, tc := range []struct {
		name     string
		hardware []string
		devices  []string // named devices (none: every device labeled ring=canary)
		waves    []store.WaveSpec
		given    []string
		left     []string // INCOMPATIBLE
		reason   string
	}{
		{name: "no hardware list: every device", given: []string{"a-0", "a-1", "b-0", "b-1", "none"}},
		{name: "one model listed", hardware: []string{"gw-a"}, given: []string{"a-0", "a-1", "none"}, left: []string{"b-0", "b-1"}},
		{name: "both models listed", hardware: []string{"gw-b", "gw-a"}, given: []string{"a-0", "a-1", "b-0", "b-1", "none"}},
		{name: "staged waves", hardware: []string{"gw-b"}, waves: []store.WaveSpec{{Count: 1}, {Percent: 100}},
			given: []string{"b-0", "b-1", "none"}, left: []string{"a-0", "a-1"}},
		{name: "named devices", hardware: []string{"gw-a"}, devices: []string{"a-1", "b-0"}, given: []string{"a-1"}, left: []string{"b-0"}},
		{name: "every target incompatible", hardware: []string{"gw-c"}, devices: []string{"a-0", "b-1"}, left: []string{"a-0", "b-1"},
			reason: "every device of the target set is incompatible with the bundle's hardware"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			for id, hw := range fleet {
				h.register(id, canary, oldBundle)
				if hw != "" {
					if _, err := h.rep.SetAttributes(h.ctx, id, map[string]string{inventory.Hardware: hw}); err != nil {
						t.Fatal(err)
					}
				}
			}
			spec := validSpec()
			spec.Hardware, spec.Waves = tc.hardware, tc.waves
			if tc.devices != nil {
				spec.Labels, spec.Devices = nil, tc.devices
			}
			spec.Abort = []store.AbortRule{{Status: string(replica.StatusRejected), Percent: 1, MinExecutions: 1}}
			id := h.create(spec)

			r := h.rollout(id)
			for i := 0; r.State != StateCompleted; i++ {
				if i == 30 || r.State != StateScheduled && r.State != StateRunning {
					t.Fatalf("rollout %s (%q) after %d steps, want it to complete", r.State, r.Reason, i)
				}
				h.step(time.Second)
				h.answerAll(h.with(id, queued), replica.StatusSucceeded)
				r = h.rollout(id)
			}
			if r.Reason != tc.reason {
				t.Errorf("reason %q, want %q", r.Reason, tc.reason)
			}
			if got := h.with(id, ExecIncompatible); !slices.Equal(got, tc.left) {
				t.Errorf("INCOMPATIBLE executions %v, want %v", got, tc.left)
			}
			if got := h.with(id, succeeded); !slices.Equal(got, tc.given) {
				t.Errorf("SUCCEEDED executions %v, want %v", got, tc.given)
			}
			if r.Incompatible != uint64(len(tc.left)) {
				t.Errorf("rollout counts %d incompatible, want %d", r.Incompatible, len(tc.left))
			}
			want := map[string]uint64{}
			if len(tc.given) > 0 {
				want = counts(succeeded, len(tc.given))
			}
			if diff := cmp.Diff(want, r.Counts, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
			var inWaves, sized uint64
			for _, w := range r.Waves {
				inWaves += w.Incompatible
				sized += w.Size
			}
			if inWaves != uint64(len(tc.left)) || sized != uint64(len(tc.given)) {
				t.Errorf("waves count %d incompatible and size %d in all, want %d and %d", inWaves, sized, len(tc.left), len(tc.given))
			}
			for _, dev := range tc.left {
				if h.given(dev, id) || h.device(dev).Desired.Version != 0 {
					t.Errorf("%s was given the job: %+v", dev, h.device(dev).Desired)
				}
				if e := h.execs(id)[dev]; e.JobID != "" || e.Attempts != 0 || e.Message == "" {
					t.Errorf("%s's execution %+v, want no job and a message saying why", dev, e)
				}
			}
			for _, dev := range tc.given {
				if !h.given(dev, id) {
					t.Errorf("%s was not given the job", dev)
				}
			}
		})
	}
}
