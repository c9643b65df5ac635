package agent_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferryhq/ferry/agent"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

// consenter answers each request for consent to an action.
type consenter func(action string) agent.ConsentAnswer

func (c consenter) Ask(_ context.Context, req agent.ConsentRequest) (agent.ConsentAnswer, error) {
	return c(req.Action), nil
}

func (w *world) setDesiredDoc(t *testing.T, d *device, doc *devicev1.DesiredDocument) uint64 {
	t.Helper()
	resp, err := w.fleet.SetDesiredState(t.Context(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{DeviceId: d.id, Document: doc}))
	if err != nil {
		t.Fatalf("SetDesiredState: %v", err)
	}
	return resp.Msg.GetDevice().GetDesired().GetVersion()
}

// TestConsentAgainstFerryd runs real agents against a real ferryd through
// the ways a job that requires consent can end other than accepted.
func TestConsentAgainstFerryd(t *testing.T) {
	w := newWorld(t)
	b := w.add(t, "gw/fw-2.bin", 8<<10)
	tests := []struct {
		name     string
		policy   *devicev1.ConsentPolicy
		answer   consenter
		wantCode string
		wantMsg  string
	}{
		{
			name:   "declined before the reboot: rolled back",
			policy: &devicev1.ConsentPolicy{BeforeInstall: true, BeforeReboot: true},
			answer: func(action string) agent.ConsentAnswer {
				if action == agent.ConsentInstall {
					return agent.ConsentAnswer{Decision: agent.DecisionAccepted, Actor: "alice"}
				}
				return agent.ConsentAnswer{Decision: agent.DecisionDeclined, Actor: "bob"}
			},
			wantCode: "consent.declined", wantMsg: "reboot declined by bob",
		},
		{
			name:   "deferred past the deadline",
			policy: &devicev1.ConsentPolicy{BeforeInstall: true, MaxDeferral: durationpb.New(600 * time.Millisecond)},
			answer: func(string) agent.ConsentAnswer {
				return agent.ConsentAnswer{Decision: agent.DecisionDeferred, Actor: "carol", Later: 200 * time.Millisecond}
			},
			wantCode: "consent.expired", wantMsg: "no consent to install within 600ms",
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := w.newDevice(t, fmt.Sprintf("consent-%d", i))
			w.background(t, d, func(c *agent.Config) { c.Consent = tt.answer })
			v := w.setDesiredDoc(t, d, &devicev1.DesiredDocument{Bundle: b, Consent: tt.policy})
			dev := w.waitSettled(t, d, v)
			j := dev.GetJob()
			if j.GetStatus() != devicev1.JobStatus_JOB_STATUS_REJECTED || j.GetStep() != devicev1.Step_STEP_AWAITING_CONSENT ||
				j.GetErrorCode() != tt.wantCode || !strings.Contains(j.GetMessage(), tt.wantMsg) {
				t.Errorf("job %v, want REJECTED in AWAITING_CONSENT, %s, %q", j, tt.wantCode, tt.wantMsg)
			}
			if got := dev.GetReported().GetState().GetBundle(); got != nil {
				t.Errorf("reports %v after the refusal, want nothing installed", got)
			}
			if pending, err := d.ab().Uncommitted(t.Context()); err != nil || pending {
				t.Errorf("boot switched to an uncommitted slot after the refusal: %v, %v", pending, err)
			}
		})
	}
}

// TestMaintenanceWindow: a device outside its maintenance window waits in
// AWAITING_CONSENT until the window opens, says until when, then installs.
// The agent's clock is set a second before a window the test makes.
func TestMaintenanceWindow(t *testing.T) {
	w := newWorld(t)
	b := w.add(t, "gw/fw-2.bin", 8<<10)
	real := time.Now()
	opens := real.UTC().Truncate(time.Minute).Add(time.Minute)
	offset := opens.Add(-time.Second).Sub(real)
	win, err := agent.ParseWindow(opens.Format("15:04") + "/1h")
	if err != nil {
		t.Fatal(err)
	}
	d := w.newDevice(t, "windowed")
	w.background(t, d, func(c *agent.Config) {
		c.MaintenanceWindow = win
		c.Now = func() time.Time { return time.Now().Add(offset) }
		c.ConsentKeepalive = 200 * time.Millisecond
	})
	v := w.setDesiredDoc(t, d, &devicev1.DesiredDocument{Bundle: b})
	dev := w.waitSettled(t, d, v)
	if j := dev.GetJob(); j.GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED {
		t.Fatalf("job %v, want SUCCEEDED once the window opened", j)
	}
	var waited *fleetv1.DeviceEvent
	for _, ev := range w.events(t, d) {
		if ev.GetKind() == "job_consent" && ev.GetErrorCode() == "maintenance.window" {
			waited = ev
		}
	}
	if waited == nil || waited.GetStep() != devicev1.Step_STEP_AWAITING_CONSENT ||
		!strings.Contains(waited.GetMessage(), "deferred by maintenance-window") || !strings.Contains(waited.GetMessage(), "until "+opens.Format(time.RFC3339)) {
		t.Errorf("history's window entry %v, want AWAITING_CONSENT deferred by maintenance-window until %v", waited, opens)
	}
}
