package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/server"
)

// TestConsentOnTheWire: a desired state's consent policy reaches the
// device in its Delta; the device's consent answers are recorded as their
// own history entries; a malformed one ends the stream INVALID_ARGUMENT.
func TestConsentOnTheWire(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.Publish(t, "gw/fw-2.bin")
	ctx := context.Background()
	fleet := f.Fleet(t)
	d := f.OpenDevice(t, "dev-1", &devicev1.Hello{})
	policy := &devicev1.ConsentPolicy{BeforeInstall: true, BeforeReboot: true, MaxDeferral: durationpb.New(48 * time.Hour)}
	if _, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{DeviceId: "dev-1",
		Document: &devicev1.DesiredDocument{Bundle: ferrytest.Bundle("gw/fw-2.bin"), Consent: policy}})); err != nil {
		t.Fatal(err)
	}
	delta := d.Recv().GetDelta()
	if got := delta.GetDesired().GetConsent(); !got.GetBeforeInstall() || !got.GetBeforeReboot() || got.GetMaxDeferral().AsDuration() != 48*time.Hour {
		t.Fatalf("Delta's consent %v, want %v", got, policy)
	}
	at := time.Now().UTC().Truncate(time.Second)
	d.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Progress{Progress: &devicev1.Progress{
		JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Step: devicev1.Step_STEP_AWAITING_CONSENT, Code: "consent.accepted",
		Consent: &devicev1.Consent{Decision: devicev1.ConsentDecision_CONSENT_DECISION_ACCEPTED, Actor: "alice", DecideTime: timestamppb.New(at), Action: "install"},
	}}})
	var consent *fleetv1.DeviceEvent
	for deadline := time.Now().Add(10 * time.Second); consent == nil; {
		evs, err := fleet.ListDeviceEvents(ctx, connect.NewRequest(&fleetv1.ListDeviceEventsRequest{DeviceId: "dev-1"}))
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs.Msg.GetEvents() {
			if ev.GetKind() == "job_consent" {
				consent = ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no consent in the history")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if want := "install accepted by alice at " + at.Format(time.RFC3339); consent.GetMessage() != want ||
		consent.GetStep() != devicev1.Step_STEP_AWAITING_CONSENT || consent.GetErrorCode() != "consent.accepted" || consent.GetActor() != "device:dev-1" {
		t.Errorf("consent entry %v, want %q in AWAITING_CONSENT by device:dev-1", consent, want)
	}
	dev, err := fleet.GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
	if err != nil {
		t.Fatal(err)
	}
	if j := dev.Msg.GetDevice().GetJob(); j.GetStep() != devicev1.Step_STEP_AWAITING_CONSENT || j.GetStatus() != devicev1.JobStatus_JOB_STATUS_IN_PROGRESS {
		t.Errorf("job %v, want IN_PROGRESS in AWAITING_CONSENT", j)
	}
	// An unknown decision: the stream ends, nothing recorded.
	d.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Progress{Progress: &devicev1.Progress{
		JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Step: devicev1.Step_STEP_AWAITING_CONSENT,
		Consent: &devicev1.Consent{Decision: 42, Actor: "mallory"},
	}}})
	for {
		_, err := d.RecvErr()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "consent.decision") {
			t.Errorf("stream ended %v, want INVALID_ARGUMENT naming consent.decision", err)
		}
		break
	}

	// A policy that asks nothing is refused.
	_, err = fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{DeviceId: "dev-2",
		Document: &devicev1.DesiredDocument{Config: map[string]string{"a": "b"}, Consent: &devicev1.ConsentPolicy{}}}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("empty consent policy: %v, want invalid_argument", err)
	}
}

// TestCopyConfigRoles: copying configuration is an operator's act.
func TestCopyConfigRoles(t *testing.T) {
	var viewerKey string
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		viewerKey = ferrytest.AddOperator(t, cfg, "dashboard", credentials.RoleViewer)
	})
	viewer := f.Fleet(t, ferrytest.Bearer(viewerKey))
	_, err := viewer.CopyConfig(context.Background(), connect.NewRequest(&fleetv1.CopyConfigRequest{FromDeviceId: "dev-1", Selector: "group=dev"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("viewer's CopyConfig: %v, want permission_denied", err)
	}
	for _, sel := range []string{"", "  "} {
		_, err = f.Fleet(t).CopyConfig(context.Background(), connect.NewRequest(&fleetv1.CopyConfigRequest{FromDeviceId: "dev-1", Selector: sel}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "selector: is required") {
			t.Errorf("CopyConfig with selector %q: %v, want invalid_argument", sel, err)
		}
	}
}
