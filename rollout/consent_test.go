package rollout

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

// TestControllerConsentIsNotATimeout: a device waiting for consent (or
// its maintenance window) is never timed out, and the time it waited does
// not count against the device timeout once it goes on; a device stuck in
// another step is timed out as before. The rollout hands the devices its
// consent policy.
func TestControllerConsentIsNotATimeout(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 2, nil)
	spec := validSpec()
	spec.Labels, spec.Devices = nil, []string{"gw-00", "gw-01"}
	spec.DeviceTimeout = 5 * time.Minute
	spec.Consent = &store.ConsentPolicy{BeforeInstall: true, MaxDeferral: 24 * time.Hour}
	id := h.create(spec)
	h.step(time.Second)
	h.step(time.Second)
	progress := func(dev string, step replica.Step) {
		t.Helper()
		d := h.device(dev)
		if _, err := h.rep.Progress(h.ctx, dev, replica.Progress{JobID: d.Desired.JobID, DesiredVersion: d.Desired.Version, Step: step}); err != nil {
			t.Fatal(err)
		}
	}
	for _, dev := range []string{"gw-00", "gw-01"} {
		if c := h.device(dev).Desired.Consent; c == nil || *c != *spec.Consent {
			t.Fatalf("%s was given consent %+v, want %+v", dev, c, spec.Consent)
		}
	}
	progress("gw-00", replica.StepAwaitingConsent) // waits for its user
	progress("gw-01", replica.StepDownloading)     // stuck downloading
	h.step(time.Second)
	h.step(3 * time.Hour)
	ex := h.execs(id)
	if e := ex["gw-00"]; e.Status != string(replica.StatusInProgress) || e.ConsentSince.IsZero() {
		t.Errorf("device waiting for consent for 3h: %+v, want IN_PROGRESS (not timed out)", e)
	}
	if e := ex["gw-01"]; e.Status != string(replica.StatusTimedOut) {
		t.Errorf("device stuck downloading for 3h: %+v, want TIMED_OUT", e)
	}

	// Consent given: it has its whole device timeout from now on.
	progress("gw-00", replica.StepInstalling)
	h.step(time.Second)
	if e := h.execs(id)["gw-00"]; !e.ConsentSince.IsZero() || e.ConsentWaited < 3*time.Hour {
		t.Errorf("after consent: %+v, want the wait summed in ConsentWaited", e)
	}
	h.step(4 * time.Minute)
	if e := h.execs(id)["gw-00"]; e.Status != string(replica.StatusInProgress) {
		t.Errorf("4m after consent: %+v, want IN_PROGRESS", e)
	}
	h.step(2 * time.Minute)
	if e := h.execs(id)["gw-00"]; e.Status != string(replica.StatusTimedOut) {
		t.Errorf("6m after consent without a result: %+v, want TIMED_OUT", e)
	}
}

func TestCreateChecksConsent(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 1, nil)
	for _, tt := range []struct {
		name    string
		policy  *store.ConsentPolicy
		wantErr string
	}{
		{"asks nothing", &store.ConsentPolicy{}, "consent: asks for consent neither"},
		{"deferral too long", &store.ConsentPolicy{BeforeReboot: true, MaxDeferral: replica.MaxConsentDeferral + time.Hour}, "consent.max_deferral: must be between"},
	} {
		spec := validSpec()
		spec.Labels, spec.Devices = nil, []string{"gw-00"}
		spec.Consent = tt.policy
		_, err := h.svc.Create(h.ctx, spec, "operator:test")
		var ie *replica.InvalidError
		if !errors.As(err, &ie) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: error %v, want InvalidError %q", tt.name, err, tt.wantErr)
		}
	}
}
