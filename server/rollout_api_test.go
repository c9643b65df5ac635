package server_test

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/server"
)

// testBundle is published in every test's repository (ferrytest.Publish).
var testBundle = ferrytest.Bundle("gw/2.0.0/fw.bin")

// TestRolloutBadInput checks that every malformed RolloutService call gets
// a clear error with the right code and creates nothing.
func TestRolloutBadInput(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			f := ferrytest.Start(t, backend, nil)
			f.Publish(t, testBundle.GetTargetPath())
			api := fleetv1connect.NewRolloutServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
			ctx := t.Context()
			create := func(edit func(*fleetv1.CreateRolloutRequest)) func() error {
				return func() error {
					req := &fleetv1.CreateRolloutRequest{Bundle: testBundle, Selector: "group=dev"}
					edit(req)
					_, err := api.CreateRollout(ctx, connect.NewRequest(req))
					return err
				}
			}
			pct := func(p float64) *fleetv1.Wave { return &fleetv1.Wave{Size: &fleetv1.Wave_Percent{Percent: p}} }
			tests := []struct {
				name string
				call func() error
				code connect.Code
				msg  string
			}{
				{"no bundle", create(func(r *fleetv1.CreateRolloutRequest) { r.Bundle = nil }), connect.CodeInvalidArgument, "bundle"},
				{"bad bundle digest", create(func(r *fleetv1.CreateRolloutRequest) {
					r.Bundle = &devicev1.Bundle{TargetPath: "a", Length: 1, Sha256: "xyz"}
				}), connect.CodeInvalidArgument, "sha256"},
				{"no target", create(func(r *fleetv1.CreateRolloutRequest) { r.Selector = "" }), connect.CodeInvalidArgument, "selector"},
				{"unpublished bundle", create(func(r *fleetv1.CreateRolloutRequest) { r.Bundle = ferrytest.Bundle("gw/9.9.9/fw.bin") }),
					connect.CodeFailedPrecondition, `no bundle "gw/9.9.9/fw.bin" is published`},
				{"bundle with another digest", create(func(r *fleetv1.CreateRolloutRequest) {
					r.Bundle = &devicev1.Bundle{TargetPath: testBundle.GetTargetPath(), Length: 10, Sha256: strings.Repeat("ab", 32)}
				}), connect.CodeFailedPrecondition, "sha256"},
				{"unpublished rollback bundle", create(func(r *fleetv1.CreateRolloutRequest) { r.RollbackBundle = ferrytest.Bundle("gw/1.0.0/fw.bin") }),
					connect.CodeFailedPrecondition, "rollback_bundle"},
				{"selector matching no device", create(func(r *fleetv1.CreateRolloutRequest) { r.Selector = "fleet=nowhere" }),
					connect.CodeFailedPrecondition, "fleet=nowhere matches no device"},
				{"no listed device exists", create(func(r *fleetv1.CreateRolloutRequest) { r.Selector, r.DeviceIds = "", []string{"gw-404", "gw-405"} }),
					connect.CodeFailedPrecondition, "none of the listed devices exists"},
				{"selector and devices", create(func(r *fleetv1.CreateRolloutRequest) { r.DeviceIds = []string{"dev-1"} }), connect.CodeInvalidArgument, "device_ids"},
				{"bad selector", create(func(r *fleetv1.CreateRolloutRequest) { r.Selector = "a=b=c" }), connect.CodeInvalidArgument, "selector"},
				{"bad device id", create(func(r *fleetv1.CreateRolloutRequest) { r.Selector, r.DeviceIds = "", []string{"../x"} }), connect.CodeInvalidArgument, "device_ids"},
				{"group contradicts selector", create(func(r *fleetv1.CreateRolloutRequest) { r.Group = "other" }), connect.CodeInvalidArgument, "group"},
				{"wave over 100%", create(func(r *fleetv1.CreateRolloutRequest) {
					r.Strategy = &fleetv1.RolloutStrategy{Waves: []*fleetv1.Wave{pct(120)}}
				}), connect.CodeInvalidArgument, "waves"},
				{"waves and rate", create(func(r *fleetv1.CreateRolloutRequest) {
					r.Strategy = &fleetv1.RolloutStrategy{Waves: []*fleetv1.Wave{pct(10)}, Rate: &fleetv1.ExponentialRate{BasePerMinute: 5}}
				}), connect.CodeInvalidArgument, "strategy"},
				{"zero rate", create(func(r *fleetv1.CreateRolloutRequest) {
					r.Strategy = &fleetv1.RolloutStrategy{Rate: &fleetv1.ExponentialRate{}}
				}), connect.CodeInvalidArgument, "rate"},
				{"negative timeout", create(func(r *fleetv1.CreateRolloutRequest) {
					r.Strategy = &fleetv1.RolloutStrategy{DeviceTimeout: durationpb.New(-time.Second)}
				}), connect.CodeInvalidArgument, "device_timeout"},
				{"abort on success", create(func(r *fleetv1.CreateRolloutRequest) {
					r.AbortRules = []*fleetv1.AbortRule{{Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, Percent: 10}}
				}), connect.CodeInvalidArgument, "abort_rules"},
				{"abort over 100%", create(func(r *fleetv1.CreateRolloutRequest) {
					r.AbortRules = []*fleetv1.AbortRule{{Status: devicev1.JobStatus_JOB_STATUS_FAILED, Percent: 101}}
				}), connect.CodeInvalidArgument, "percent"},
				{"bad window", create(func(r *fleetv1.CreateRolloutRequest) {
					r.MaintenanceWindow = &fleetv1.MaintenanceWindow{Start: "25:00", Duration: durationpb.New(time.Hour)}
				}), connect.CodeInvalidArgument, "maintenance_window"},
				{"bad window day", create(func(r *fleetv1.CreateRolloutRequest) {
					r.MaintenanceWindow = &fleetv1.MaintenanceWindow{Start: "02:00", Duration: durationpb.New(time.Hour), Days: []string{"someday"}}
				}), connect.CodeInvalidArgument, "days"},
				{"bad start time", create(func(r *fleetv1.CreateRolloutRequest) {
					r.StartTime = &timestamppb.Timestamp{Seconds: -1 << 62}
				}), connect.CodeInvalidArgument, "start_time"},
				{"continuous device list", create(func(r *fleetv1.CreateRolloutRequest) {
					r.Selector, r.DeviceIds, r.Continuous = "", []string{"dev-1"}, true
				}), connect.CodeInvalidArgument, "continuous"},
				{"unknown rollout", func() error {
					_, err := api.GetRollout(ctx, connect.NewRequest(&fleetv1.GetRolloutRequest{RolloutId: "r-20260101-000000-000000"}))
					return err
				}, connect.CodeNotFound, "rollout not found"},
				{"malformed rollout id", func() error {
					_, err := api.PauseRollout(ctx, connect.NewRequest(&fleetv1.PauseRolloutRequest{RolloutId: "R/../1"}))
					return err
				}, connect.CodeInvalidArgument, "rollout_id"},
				{"executions of an unknown rollout", func() error {
					_, err := api.ListRolloutExecutions(ctx, connect.NewRequest(&fleetv1.ListRolloutExecutionsRequest{RolloutId: "r-20260101-000000-000-000000"}))
					return err
				}, connect.CodeNotFound, "rollout not found"},
				{"executions by an unknown status", func() error {
					_, err := api.ListRolloutExecutions(ctx, connect.NewRequest(&fleetv1.ListRolloutExecutionsRequest{RolloutId: "r-20260101-000000-000-000000", Status: "DONE"}))
					return err
				}, connect.CodeInvalidArgument, "status"},
				{"bad page token", func() error {
					_, err := api.ListRollouts(ctx, connect.NewRequest(&fleetv1.ListRolloutsRequest{PageToken: "!!"}))
					return err
				}, connect.CodeInvalidArgument, "page_token"},
			}
			for _, tt := range tests {
				err := tt.call()
				if got := connect.CodeOf(err); got != tt.code || !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("%s: %v (code %v), want code %v mentioning %q", tt.name, err, got, tt.code, tt.msg)
				}
			}
			list, err := api.ListRollouts(ctx, connect.NewRequest(&fleetv1.ListRolloutsRequest{}))
			if err != nil || len(list.Msg.GetRollouts()) != 0 {
				t.Fatalf("after bad calls: %v, %v; want no rollout", list, err)
			}

			// A rollout that is canceled cannot be resumed; one without a
			// rollback bundle cannot be canceled with a rollback.
			start := timestamppb.New(time.Now().Add(time.Hour))
			resp, err := api.CreateRollout(ctx, connect.NewRequest(&fleetv1.CreateRolloutRequest{Bundle: testBundle, Group: "dev", StartTime: start}))
			if err != nil {
				t.Fatal(err)
			}
			ro := resp.Msg.GetRollout()
			if ro.GetState() != "SCHEDULED" || ro.GetSelector() != "group=dev" {
				t.Fatalf("created %s on %q, want SCHEDULED on group=dev", ro.GetState(), ro.GetSelector())
			}
			_, err = api.CancelRollout(ctx, connect.NewRequest(&fleetv1.CancelRolloutRequest{RolloutId: ro.GetId(), Rollback: true}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("cancel with rollback and no rollback bundle: %v", err)
			}
			if _, err := api.CancelRollout(ctx, connect.NewRequest(&fleetv1.CancelRolloutRequest{RolloutId: ro.GetId()})); err != nil {
				t.Fatal(err)
			}
			_, err = api.ResumeRollout(ctx, connect.NewRequest(&fleetv1.ResumeRolloutRequest{RolloutId: ro.GetId()}))
			if connect.CodeOf(err) != connect.CodeFailedPrecondition {
				t.Errorf("resume a canceled rollout: %v, want FailedPrecondition", err)
			}
		})
	}
}

// TestRolloutViewerCannotSteer checks the roles: a viewer reads rollouts
// but cannot create or steer them.
func TestRolloutViewerCannotSteer(t *testing.T) {
	var viewer string
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		viewer = ferrytest.AddOperator(t, cfg, "watcher", credentials.RoleViewer)
	})
	api := fleetv1connect.NewRolloutServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(viewer))
	_, err := api.CreateRollout(t.Context(), connect.NewRequest(&fleetv1.CreateRolloutRequest{Bundle: testBundle, Selector: "group=dev"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("viewer creates a rollout: %v, want PermissionDenied", err)
	}
	if _, err := api.ListRollouts(t.Context(), connect.NewRequest(&fleetv1.ListRolloutsRequest{})); err != nil {
		t.Errorf("viewer lists rollouts: %v", err)
	}
}

// TestWatchRolloutDeadline checks that a watch ended by the caller's
// deadline says so (DeadlineExceeded) rather than ending cleanly, which
// would read as the rollout's work being done. The deadline is sent as the
// Connect timeout header only, so that the server's copy of it, not the
// client's context, ends the stream, as it does when the server's copy
// (whole milliseconds) runs out just before the client's.
func TestWatchRolloutDeadline(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.Publish(t, testBundle.GetTargetPath())
	api := fleetv1connect.NewRolloutServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
	created, err := api.CreateRollout(t.Context(), connect.NewRequest(&fleetv1.CreateRolloutRequest{Bundle: testBundle, Selector: "group=dev"}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.GetRollout().GetId()
	req := connect.NewRequest(&fleetv1.WatchRolloutRequest{RolloutId: id})
	req.Header().Set("Connect-Timeout-Ms", "300")
	stream, err := api.WatchRollout(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	n := 0
	for stream.Receive() {
		if got := stream.Msg().GetRollout().GetId(); got != id {
			t.Fatalf("watch sent rollout %q, want %q", got, id)
		}
		n++
	}
	if n == 0 {
		t.Error("watch sent nothing before its deadline")
	}
	if code := connect.CodeOf(stream.Err()); code != connect.CodeDeadlineExceeded {
		t.Errorf("watch ended with %v (code %v), want DeadlineExceeded", stream.Err(), code)
	}
}
