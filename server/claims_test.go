package server_test

import (
	"context"
	"maps"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

// forgedBundle is a bundle no one published, as a device written from the
// public docs with another gRPC stack might claim it runs.
var forgedBundle = &devicev1.Bundle{TargetPath: "evil/never-published.bin", Length: 4096,
	Sha256: "0000000000000000000000000000000000000000000000000000000000000000"}

func getDevice(t *testing.T, f *ferrytest.Ferryd, id string) *fleetv1.Device {
	t.Helper()
	resp, err := f.Fleet(t).GetDevice(context.Background(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id}))
	if err != nil {
		t.Fatalf("GetDevice(%s): %v", id, err)
	}
	return resp.Msg.GetDevice()
}

func devicesRunning(t *testing.T, f *ferrytest.Ferryd, bundle string) []string {
	t.Helper()
	resp, err := f.Fleet(t).ListDevices(context.Background(), connect.NewRequest(&fleetv1.ListDevicesRequest{Bundle: bundle}))
	if err != nil {
		t.Fatalf("ListDevices(bundle %s): %v", bundle, err)
	}
	var ids []string
	for _, d := range resp.Msg.GetDevices() {
		ids = append(ids, d.GetId())
	}
	return ids
}

// succeed answers the Delta the device receives next with a signed
// SUCCEEDED report for its bundle, and returns the Delta and the answer.
func succeed(t *testing.T, dev *ferrytest.Device) (*devicev1.Delta, *devicev1.Accepted) {
	t.Helper()
	delta := dev.Recv().GetDelta()
	if delta == nil {
		t.Fatal("no Delta")
	}
	dev.SendReport(&devicev1.Report{JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(),
		Status:   devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: &devicev1.ReportedState{Bundle: delta.GetDesired().GetBundle(), Config: delta.GetDesired().GetConfig()}})
	answer := dev.Recv()
	if answer.GetAccepted() == nil {
		t.Errorf("answer to the report of job %s: %v, want Accepted", delta.GetJobId(), answer)
	}
	return delta, answer.GetAccepted()
}

// TestHelloClaimIsNotEvidence: a device claims in its unsigned Hello a
// bundle that was never published. What Ferry says the device runs, the
// bundle filter and the summary's counts stay as its signed reports left
// them, on each backend; the claim is shown apart, with a history event.
func TestHelloClaimIsNotEvidence(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			f := ferrytest.Start(t, backend, nil)
			f.Publish(t, "gw/fw-1.bin")
			ctx := context.Background()
			dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{AgentVersion: "ferry-agent/test"})
			if _, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
				DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: bundle("gw/fw-1.bin")},
			})); err != nil {
				t.Fatal(err)
			}
			succeed(t, dev)
			dev.Close()

			summary := func() map[string]uint64 {
				t.Helper()
				sum, err := f.Fleet(t).GetFleetSummary(ctx, connect.NewRequest(&fleetv1.GetFleetSummaryRequest{}))
				if err != nil {
					t.Fatal(err)
				}
				return sum.Msg.GetDevicesPerBundle()
			}
			targets := []string{forgedBundle.GetTargetPath(), "gw/fw-1.bin", "(none)"}
			before := map[string][]string{}
			for _, target := range targets {
				before[target] = devicesRunning(t, f, target)
			}
			countsBefore := summary()

			claim := &devicev1.Hello{AgentVersion: "other-stack/0.1", LastAppliedDesiredVersion: 1,
				Reported: &devicev1.ReportedState{Bundle: forgedBundle}}
			f.OpenDevice(t, "dev-1", claim) // returns once the Hello is recorded (Session came)
			f.OpenDevice(t, "dev-2", claim) // never reported anything

			d := getDevice(t, f, "dev-1")
			if got := d.GetReported().GetState().GetBundle().GetTargetPath(); got != "gw/fw-1.bin" {
				t.Errorf("dev-1 runs %q after the Hello; want gw/fw-1.bin, as its signed report said", got)
			}
			if got := getDevice(t, f, "dev-2").GetReported().GetState().GetBundle(); got != nil {
				t.Errorf("dev-2 runs %v after a Hello only; want no bundle", got)
			}
			if got := before["gw/fw-1.bin"]; !equalStrings(got, []string{"dev-1"}) || len(before[forgedBundle.GetTargetPath()]) != 0 {
				t.Fatalf("devices running before the claims: %v", before)
			}
			for _, target := range targets {
				if got := devicesRunning(t, f, target); !equalStrings(got, before[target]) {
					t.Errorf("devices running %s after the claims: %v, want %v as before", target, got, before[target])
				}
			}
			if got := summary(); !maps.Equal(got, countsBefore) {
				t.Errorf("devices per bundle after the claims %v, want %v as before", got, countsBefore)
			}

			// The claim is shown apart from the verified state, and in the
			// history.
			if !d.GetReported().GetSigned() {
				t.Error("dev-1's reported state is not marked signed")
			}
			if c := d.GetClaim(); c.GetState().GetBundle().GetTargetPath() != forgedBundle.GetTargetPath() ||
				c.GetLastAppliedDesiredVersion() != 1 || c.GetClaimTime() == nil {
				t.Errorf("dev-1's claim %v, want the Hello's", c)
			}
			events, err := f.Fleet(t).ListDeviceEvents(ctx, connect.NewRequest(&fleetv1.ListDeviceEventsRequest{DeviceId: "dev-1"}))
			if err != nil {
				t.Fatal(err)
			}
			if ev := events.Msg.GetEvents(); len(ev) == 0 || ev[0].GetKind() != "hello_claim" || ev[0].GetActor() != "device:dev-1" {
				t.Errorf("newest event of dev-1: %v; want hello_claim", ev)
			}
		})
	}
}

// TestLostStateDeviceCountsSucceeded: a device succeeds in a rollout, then
// loses its agent state, is re-enrolled and connects saying it runs
// nothing. Its verified state stays, the same Delta is sent again, it
// installs again, and its signed report for the same job and bundle is
// Accepted (repeated): the rollout counts it SUCCEEDED, not ROLLED_BACK,
// and its abort rule on ROLLED_BACK does not fire.
func TestLostStateDeviceCountsSucceeded(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			f := ferrytest.Start(t, backend, nil)
			f.Publish(t, "gw/fw-2.bin")
			ctx := context.Background()
			gw := enroll(t, f, "gw-1")
			dev := f.OpenDeviceWithTLS(t, gw.id, gw.tls, &devicev1.Hello{AgentVersion: "ferry-agent/test"})
			rollouts := fleetv1connect.NewRolloutServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
			created, err := rollouts.CreateRollout(ctx, connect.NewRequest(&fleetv1.CreateRolloutRequest{
				Bundle: bundle("gw/fw-2.bin"), DeviceIds: []string{"gw-1"},
				Strategy:   &fleetv1.RolloutStrategy{Soak: durationpb.New(3 * time.Second)},
				AbortRules: []*fleetv1.AbortRule{{Status: devicev1.JobStatus_JOB_STATUS_ROLLED_BACK, Percent: 50}},
			}))
			if err != nil {
				t.Fatal(err)
			}
			id := created.Msg.GetRollout().GetId()
			waitFor := func(what string, ok func(*fleetv1.Rollout) bool) *fleetv1.Rollout {
				t.Helper()
				for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
					resp, err := rollouts.GetRollout(ctx, connect.NewRequest(&fleetv1.GetRolloutRequest{RolloutId: id}))
					if err != nil {
						t.Fatal(err)
					}
					if r := resp.Msg.GetRollout(); ok(r) {
						return r
					} else if time.Now().After(deadline) {
						t.Fatalf("rollout never %s: %v", what, r)
					}
				}
			}
			first, _ := succeed(t, dev)
			waitFor("soaking", func(r *fleetv1.Rollout) bool {
				return len(r.GetWaves()) == 1 && r.GetWaves()[0].GetState() == "SOAKING"
			})

			// The device loses its state; it is re-enrolled (a new key and
			// certificate) and says it runs nothing, applied nothing.
			dev.Close()
			readded, err := f.Fleet(t).AddDevice(ctx, connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: "gw-1", Reenroll: true}))
			if err != nil {
				t.Fatal(err)
			}
			gw = enrollWithToken(t, f, "gw-1", readded.Msg.GetEnrollmentToken())
			dev = f.OpenDeviceWithTLS(t, gw.id, gw.tls, &devicev1.Hello{AgentVersion: "ferry-agent/test"})
			if got := getDevice(t, f, "gw-1").GetReported().GetState().GetBundle().GetTargetPath(); got != "gw/fw-2.bin" {
				t.Errorf("after a Hello with no state the device runs %q; want gw/fw-2.bin, as its signed report said", got)
			}
			again, accepted := succeed(t, dev)
			if again.GetJobId() != first.GetJobId() || again.GetDesiredVersion() != first.GetDesiredVersion() {
				t.Errorf("Delta after the lost state: job %s v%d; want the same job %s v%d",
					again.GetJobId(), again.GetDesiredVersion(), first.GetJobId(), first.GetDesiredVersion())
			}
			if !accepted.GetRepeated() {
				t.Errorf("answer to the repeated report %v; want repeated", accepted)
			}

			r := waitFor("ended", func(r *fleetv1.Rollout) bool { return r.GetEndTime() != nil })
			if r.GetState() != "COMPLETED" || r.GetCounts()["SUCCEEDED"] != 1 || r.GetCounts()["ROLLED_BACK"] != 0 {
				t.Errorf("rollout ended %s (%s) with counts %v; want COMPLETED with the device SUCCEEDED", r.GetState(), r.GetStateReason(), r.GetCounts())
			}
			d := getDevice(t, f, "gw-1")
			if d.GetReported().GetState().GetBundle().GetTargetPath() != "gw/fw-2.bin" || d.GetJob().GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED || d.GetClaim() != nil {
				t.Errorf("device after the rollout: %v; want gw/fw-2.bin, SUCCEEDED, no claim left", d)
			}
		})
	}
}
