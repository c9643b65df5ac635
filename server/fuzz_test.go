package server

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/rollout"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
)

// FuzzDeviceMessage feeds arbitrary bytes, as a device would send them, to
// the decoding and the replica: nothing may panic, and a report the replica
// does not accept must change nothing.
func FuzzDeviceMessage(f *testing.F) {
	seeds := []*devicev1.SyncRequest{
		{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{AgentVersion: "a", Reported: &devicev1.ReportedState{
			Bundle: &devicev1.Bundle{TargetPath: "fw.bin", Length: 1, Sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}}}},
		{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{JobId: "job-1", DesiredVersion: 1, Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED}}},
		{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{JobId: "job-1", DesiredVersion: 1, Status: 99, Step: 42}}},
		{Message: &devicev1.SyncRequest_Progress{Progress: &devicev1.Progress{JobId: "job-1", DesiredVersion: 1, Step: devicev1.Step_STEP_VERIFYING}}},
		{Message: &devicev1.SyncRequest_Progress{Progress: &devicev1.Progress{JobId: "job-1", DesiredVersion: 1, Step: devicev1.Step_STEP_DOWNLOADING,
			DownloadMethod: devicev1.DownloadMethod_DOWNLOAD_METHOD_DELTA, BytesDownloaded: 1 << 40, Code: "delta.fallback", Message: "base modified"}}},
		{Message: &devicev1.SyncRequest_Progress{Progress: &devicev1.Progress{JobId: "job-1", DesiredVersion: 1, DownloadMethod: 77}}},
		{Message: &devicev1.SyncRequest_Ack{Ack: &devicev1.Ack{Of: &devicev1.Ack_PingId{PingId: 3}}}},
	}
	for _, s := range seeds {
		raw, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	db, err := bolt.Open(filepath.Join(f.TempDir(), "ferry.db"))
	if err != nil {
		f.Fatal(err)
	}
	defer db.Close()
	rep := replica.New(replica.Config{Devices: db, Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	if _, err := rep.Register(ctx, "dev-1", nil); err != nil {
		f.Fatal(err)
	}
	if _, err := rep.SetDesired(ctx, "dev-1", replica.Document{Config: map[string]string{"k": "v"}}, "fuzz", nil); err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, raw []byte) {
		var msg devicev1.SyncRequest
		if proto.Unmarshal(raw, &msg) != nil {
			return
		}
		before, err := rep.GetDevice(ctx, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.GetMessage().(type) {
		case *devicev1.SyncRequest_Hello:
			_, _ = rep.Connect(ctx, "dev-1", replica.Hello{AgentVersion: m.Hello.GetAgentVersion(), State: stateFromProto(m.Hello.GetReported())})
		case *devicev1.SyncRequest_Report:
			out, err := rep.Report(ctx, "dev-1", reportFromProto(m.Report))
			if err != nil {
				t.Fatal(err)
			}
			after, _ := rep.GetDevice(ctx, "dev-1")
			if !out.Accepted && after.Reported.Version != before.Reported.Version {
				t.Fatalf("rejected report %v changed the device", m.Report)
			}
			_ = deviceToProto(after)
		case *devicev1.SyncRequest_Progress:
			if _, err := rep.Progress(ctx, "dev-1", progressFromProto(m.Progress)); err != nil {
				if after, _ := rep.GetDevice(ctx, "dev-1"); after.Reported.Version != before.Reported.Version {
					t.Fatalf("refused progress %v changed the device", m.Progress)
				}
			}
			after, _ := rep.GetDevice(ctx, "dev-1")
			_ = deviceToProto(after)
		}
	})
}

// FuzzSetDesiredState does the same for the back-office request.
func FuzzSetDesiredState(f *testing.F) {
	seed, _ := proto.Marshal(&fleetv1.SetDesiredStateRequest{DeviceId: "dev-1", Document: &devicev1.DesiredDocument{
		Bundle: &devicev1.Bundle{TargetPath: "a/b.bin", Length: 7, Sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
		Config: map[string]string{"k": "v"}}})
	f.Add(seed)
	db, err := bolt.Open(filepath.Join(f.TempDir(), "ferry.db"))
	if err != nil {
		f.Fatal(err)
	}
	defer db.Close()
	rep := replica.New(replica.Config{Devices: db, Logger: slog.New(slog.DiscardHandler)})
	ctx := context.Background()
	if _, err := rep.Register(ctx, "dev-1", nil); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var req fleetv1.SetDesiredStateRequest
		if proto.Unmarshal(raw, &req) != nil {
			return
		}
		before, _ := rep.GetDevice(ctx, "dev-1")
		_, err := rep.SetDesired(ctx, req.GetDeviceId(), documentFromProto(req.GetDocument()), "fuzz", req.ExpectedVersion)
		after, _ := rep.GetDevice(ctx, "dev-1")
		if err != nil && after.Desired.Version != before.Desired.Version {
			t.Fatalf("refused request changed the device: %v", err)
		}
		if err == nil && req.GetDeviceId() == "dev-1" {
			if err := replica.ValidateTargetPath(after.Desired.Bundle.TargetPath); after.Desired.Bundle.TargetPath != "" && err != nil {
				t.Fatalf("stored a bad target path %q", after.Desired.Bundle.TargetPath)
			}
		}
	})
}

// FuzzCreateRollout feeds arbitrary bytes, as an operator's client would
// send them, to the decoding and checking of CreateRollout: nothing may
// panic, and what passes the checks converts back without loss of the
// target or the bundle.
func FuzzCreateRollout(f *testing.F) {
	seeds := []*fleetv1.CreateRolloutRequest{
		{Bundle: &devicev1.Bundle{TargetPath: "fw.bin", Length: 1, Sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}, Selector: "ring=canary",
			Strategy:          &fleetv1.RolloutStrategy{Waves: []*fleetv1.Wave{{Size: &fleetv1.Wave_Percent{Percent: 5}}, {Size: &fleetv1.Wave_Count{Count: 50}}}, MaxInFlight: 10},
			AbortRules:        []*fleetv1.AbortRule{{Status: devicev1.JobStatus_JOB_STATUS_FAILED, Percent: 10, MinExecutions: 5}},
			MaintenanceWindow: &fleetv1.MaintenanceWindow{Start: "23:30", Days: []string{"mon", "sat"}, TimeZone: "Europe/Berlin"}},
		{Group: "dev", Strategy: &fleetv1.RolloutStrategy{Rate: &fleetv1.ExponentialRate{BasePerMinute: 2, Factor: 2, RaiseAfterSuccesses: 10}}},
		{DeviceIds: []string{"dev-1", "dev-2"}, Continuous: true},
	}
	for _, s := range seeds {
		raw, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var req fleetv1.CreateRolloutRequest
		if proto.Unmarshal(raw, &req) != nil {
			return
		}
		spec, err := rolloutSpecFromProto(&req)
		if err != nil {
			return
		}
		if rollout.Validate(spec) != nil {
			return
		}
		out := rolloutToProto(store.Rollout{ID: "r-1", Spec: spec})
		if back, err := rolloutSpecFromProto(&fleetv1.CreateRolloutRequest{Bundle: out.GetBundle(), Selector: out.GetSelector(), DeviceIds: out.GetDeviceIds()}); err != nil ||
			back.Bundle != spec.Bundle || len(back.Labels) != len(spec.Labels) || len(back.Devices) != len(spec.Devices) {
			t.Fatalf("round trip of %v: %v, %v", &req, back, err)
		}
	})
}
