package server_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

// TestFleetQueries: selectors, filters, the summary and the watch stream,
// on each backend.
func TestFleetQueries(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			f := ferrytest.Start(t, backend, nil)
			f.Publish(t, "gw/fw-2.bin")
			ctx := context.Background()
			fleet := f.Fleet(t)

			watch, err := fleet.WatchDevices(ctx, connect.NewRequest(&fleetv1.WatchDevicesRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			defer watch.Close()

			// dev-1 reports running fw-1; then all development devices (label
			// group=dev) get fw-2 through one selector.
			dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{Reported: &devicev1.ReportedState{Bundle: bundle("gw/fw-1.bin")}})
			resp, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
				Selector: "group=dev", Document: &devicev1.DesiredDocument{Bundle: bundle("gw/fw-2.bin")},
			}))
			if err != nil {
				t.Fatal(err)
			}
			if n := resp.Msg.GetDevicesUpdated(); n != 3 {
				t.Fatalf("selector updated %d devices, want 3", n)
			}
			delta := dev.Recv().GetDelta()
			dev.SendReport(&devicev1.Report{JobId: delta.GetJobId(), DesiredVersion: 1,
				Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, Reported: &devicev1.ReportedState{Bundle: bundle("gw/fw-2.bin")}})
			if dev.Recv().GetAccepted() == nil {
				t.Fatal("report not accepted")
			}

			list := func(req *fleetv1.ListDevicesRequest) []string {
				t.Helper()
				r, err := fleet.ListDevices(ctx, connect.NewRequest(req))
				if err != nil {
					t.Fatal(err)
				}
				var ids []string
				for _, d := range r.Msg.GetDevices() {
					ids = append(ids, d.GetId())
				}
				return ids
			}
			tests := []struct {
				name string
				req  *fleetv1.ListDevicesRequest
				want []string
			}{
				{"queued", &fleetv1.ListDevicesRequest{JobStatus: devicev1.JobStatus_JOB_STATUS_QUEUED}, []string{"dev-2", "dev-3"}},
				{"succeeded", &fleetv1.ListDevicesRequest{JobStatus: devicev1.JobStatus_JOB_STATUS_SUCCEEDED}, []string{"dev-1"}},
				{"running fw-2", &fleetv1.ListDevicesRequest{Bundle: "gw/fw-2.bin"}, []string{"dev-1"}},
				{"label", &fleetv1.ListDevicesRequest{LabelSelector: "group=dev"}, []string{"dev-1", "dev-2", "dev-3"}},
				{"other label", &fleetv1.ListDevicesRequest{LabelSelector: "group=lab"}, nil},
				{"never seen", &fleetv1.ListDevicesRequest{SeenBefore: timestamppb.New(time.Now().Add(-time.Hour))}, []string{"dev-2", "dev-3"}},
			}
			for _, tt := range tests {
				if got := list(tt.req); !equalStrings(got, tt.want) {
					t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
				}
			}

			sum, err := fleet.GetFleetSummary(ctx, connect.NewRequest(&fleetv1.GetFleetSummaryRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			m := sum.Msg
			if m.GetTotalDevices() != 3 || m.GetSilentDevices() != 2 || m.GetDevicesPerStatus()["QUEUED"] != 2 ||
				m.GetDevicesPerStatus()["SUCCEEDED"] != 1 || m.GetDevicesPerBundle()["gw/fw-2.bin"] != 1 {
				t.Errorf("summary: %v", m)
			}

			// The watch saw dev-1 reach SUCCEEDED.
			deadline := time.After(10 * time.Second)
			for done := false; !done; {
				got := make(chan *fleetv1.Device, 1)
				go func() {
					if watch.Receive() {
						got <- watch.Msg().GetDevice()
					} else {
						close(got)
					}
				}()
				select {
				case d, ok := <-got:
					if !ok {
						t.Fatalf("watch ended: %v", watch.Err())
					}
					done = d.GetId() == "dev-1" && d.GetJob().GetStatus() == devicev1.JobStatus_JOB_STATUS_SUCCEEDED
				case <-deadline:
					t.Fatal("the watch did not show dev-1 succeeding")
				}
			}
		})
	}
}
