package sim_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferryhq/ferry/agent/sim"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/tuf"
)

// TestRolloutWaitsForConsent runs a rollout that requires consent before
// install and before reboot on simulated devices whose users first say
// "later": every device waits (AWAITING_CONSENT, longer than the device
// timeout, without being timed out), its history records who deferred and
// accepted each step and when, and the rollout completes.
func TestRolloutWaitsForConsent(t *testing.T) {
	w := newWorld(t)
	v2 := w.add(t, "gateway", "2.0.0", 16<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	const later, timeout = 1500 * time.Millisecond, 2 * time.Second
	fl := w.startFleetWith(t, "consent-", "consent", 3, "gw-a", sim.Faults{}, func(c *sim.Config) {
		c.Consent = &sim.SimulatedConsent{Delay: later, Actor: "site-manager"}
	})
	policy := &devicev1.ConsentPolicy{BeforeInstall: true, BeforeReboot: true, MaxDeferral: durationpb.New(time.Hour)}
	ro := w.createRollout(t, &fleetv1.CreateRolloutRequest{
		Bundle: v2.bundle(), Selector: "fleet=consent", Consent: policy,
		Strategy: &fleetv1.RolloutStrategy{DeviceTimeout: durationpb.New(timeout)},
	})
	if c := ro.GetConsent(); !c.GetBeforeInstall() || !c.GetBeforeReboot() || c.GetMaxDeferral().AsDuration() != time.Hour {
		t.Errorf("rollout's consent policy %v, want %v", c, policy)
	}
	seen := w.watchRollout(t, ro.GetId())
	end := seen[len(seen)-1]
	if end.GetState() != "COMPLETED" || end.GetCounts()["SUCCEEDED"] != 3 {
		t.Fatalf("rollout ended %s (%s) with %v, want COMPLETED with 3 SUCCEEDED (waiting for consent is not a timeout)",
			end.GetState(), end.GetStateReason(), end.GetCounts())
	}
	w.waitRunning(t, fl.IDs, v2.path)
	for _, id := range fl.IDs {
		var steps, consents []string
		var awaiting []*fleetv1.DeviceEvent
		evs := w.history(t, id)
		slices.Reverse(evs) // oldest first
		for _, ev := range evs {
			if ev.GetKind() == "job_progress" {
				steps = append(steps, strings.TrimPrefix(ev.GetStep().String(), "STEP_"))
			}
			if ev.GetKind() == "job_consent" {
				consents = append(consents, ev.GetErrorCode()+" "+ev.GetMessage())
				steps = append(steps, "consent")
			}
			if ev.GetStep() == devicev1.Step_STEP_AWAITING_CONSENT {
				awaiting = append(awaiting, ev)
			}
		}
		wantConsents := []string{"install deferred by site-manager", "install accepted by site-manager",
			"reboot deferred by site-manager", "reboot accepted by site-manager"}
		if len(consents) != len(wantConsents) {
			t.Fatalf("%s: consent history %q, want %q", id, consents, wantConsents)
		}
		for i, want := range wantConsents {
			if !strings.Contains(consents[i], want) {
				t.Errorf("%s: consent entry %d is %q, want it to say %q", id, i, consents[i], want)
			}
		}
		// The consent steps come before the install and before the reboot.
		install, reboot := slices.Index(steps, "INSTALLING"), slices.Index(steps, "REBOOTING")
		if install < 0 || reboot < 0 || !slices.Contains(steps[:install], "consent") || !slices.Contains(steps[install:reboot], "consent") {
			t.Errorf("%s: steps %v, want consent before INSTALLING and again before REBOOTING", id, steps)
		}
		// Each deferral lasted: the acceptance follows it by about
		// "later" (the times are ferryd's, when it recorded each).
		for i := 0; i+1 < len(awaiting); i++ {
			a, b := awaiting[i], awaiting[i+1]
			if a.GetErrorCode() == "consent.deferred" && b.GetErrorCode() == "consent.accepted" {
				if gap := b.GetTime().AsTime().Sub(a.GetTime().AsTime()); gap < later/2 {
					t.Errorf("%s: accepted %v after deferring for %v", id, gap, later)
				}
			}
		}
	}
}

// TestDeclinedConsentRejects: a desired state whose consent the device's
// user declines ends REJECTED in AWAITING_CONSENT, with who declined, and
// installs nothing.
func TestDeclinedConsentRejects(t *testing.T) {
	w := newWorld(t)
	v2 := w.add(t, "gateway", "2.0.0", 16<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	fl := w.startFleetWith(t, "decline-", "decline", 2, "gw-a", sim.Faults{}, func(c *sim.Config) {
		c.Consent = &sim.SimulatedConsent{Actor: "owner", Decline: true}
	})
	devs := w.setDesired(t, fl, "decline", &devicev1.DesiredDocument{Bundle: v2.bundle(), Consent: &devicev1.ConsentPolicy{BeforeInstall: true}})
	for _, d := range devs {
		j := d.GetJob()
		if j.GetStatus() != devicev1.JobStatus_JOB_STATUS_REJECTED || j.GetStep() != devicev1.Step_STEP_AWAITING_CONSENT ||
			j.GetErrorCode() != "consent.declined" || !strings.Contains(j.GetMessage(), "install declined by owner") {
			t.Errorf("%s: job %v, want REJECTED in AWAITING_CONSENT with consent.declined by owner", d.GetId(), j)
		}
		if got := d.GetReported().GetState().GetBundle().GetTargetPath(); got != "" {
			t.Errorf("%s runs %q after declining, want nothing installed", d.GetId(), got)
		}
	}
	if n := fl.Stats.Installs.Load(); n != 0 {
		t.Errorf("%d installs after consent was declined", n)
	}
}

// TestConsentWithoutHookRejects: a device with no way to ask refuses a
// job that requires consent, at once.
func TestConsentWithoutHookRejects(t *testing.T) {
	w := newWorld(t)
	fl := w.startFleet(t, "nohook", 1, "gw-a", sim.Faults{})
	devs := w.setDesired(t, fl, "nohook", &devicev1.DesiredDocument{Config: map[string]string{"a": "b"},
		Consent: &devicev1.ConsentPolicy{BeforeInstall: true}})
	if j := devs[0].GetJob(); j.GetStatus() != devicev1.JobStatus_JOB_STATUS_REJECTED || j.GetErrorCode() != "consent.unavailable" {
		t.Errorf("job %v, want REJECTED with consent.unavailable", j)
	}
}
