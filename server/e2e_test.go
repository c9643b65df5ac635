package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
)

// sum is the SHA-256 of the bundles the tests publish (ferrytest.Publish).
var sum = ferrytest.BundleSHA256

// bundle names the bundle ferrytest.Publish publishes at path: a desired
// state may only name a published bundle.
func bundle(path string) *devicev1.Bundle { return ferrytest.Bundle(path) }

// TestWalkingSkeleton is the update pattern end to end, on each backend: a
// device opens its stream over mutual TLS, an operator sets desired state
// (Connect, gRPC and plain HTTP JSON), the device receives each Delta,
// reports, gets Accepted, and the operator reads the report back.
func TestWalkingSkeleton(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			f := ferrytest.Start(t, backend, nil)
			f.Publish(t, "gw/fw-2.0.connect.bin", "gw/fw-2.0.grpc.bin", "gw/fw-2.0.http-json.bin")
			ctx := context.Background()
			dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{
				AgentVersion: "ferry-agent/test",
				Reported:     &devicev1.ReportedState{Bundle: bundle("gw/fw-1.0.bin")},
			})

			// Desired state through three protocols; each reaches the device
			// as a Delta with the next version.
			setters := []struct {
				name string
				set  func(t *testing.T, req *fleetv1.SetDesiredStateRequest) *fleetv1.Device
			}{
				{"connect", func(t *testing.T, req *fleetv1.SetDesiredStateRequest) *fleetv1.Device {
					resp, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(req))
					if err != nil {
						t.Fatal(err)
					}
					return resp.Msg.GetDevice()
				}},
				{"grpc", func(t *testing.T, req *fleetv1.SetDesiredStateRequest) *fleetv1.Device {
					resp, err := f.Fleet(t, connect.WithGRPC()).SetDesiredState(ctx, connect.NewRequest(req))
					if err != nil {
						t.Fatal(err)
					}
					return resp.Msg.GetDevice()
				}},
				{"http-json", func(t *testing.T, req *fleetv1.SetDesiredStateRequest) *fleetv1.Device {
					var resp fleetv1.SetDesiredStateResponse
					postJSON(t, f, "/ferry.fleet.v1.FleetService/SetDesiredState", req, &resp)
					return resp.GetDevice()
				}},
			}
			var last *devicev1.Delta
			for i, s := range setters {
				version := uint64(i + 1)
				target := "gw/fw-2.0." + s.name + ".bin"
				got := s.set(t, &fleetv1.SetDesiredStateRequest{
					DeviceId: "dev-1",
					Document: &devicev1.DesiredDocument{Bundle: bundle(target), Config: map[string]string{"log.level": "debug"}},
				})
				if got.GetDesired().GetVersion() != version || got.GetDesired().GetSetBy() != "operator:dev-admin" {
					t.Fatalf("%s: desired %v", s.name, got.GetDesired())
				}
				delta := dev.Recv().GetDelta()
				if delta.GetDesiredVersion() != version || delta.GetDesired().GetBundle().GetTargetPath() != target ||
					delta.GetJobId() != got.GetDesired().GetJobId() {
					t.Fatalf("%s: delta %v, want version %d of %s", s.name, delta, version, target)
				}
				if want := []string{"bundle", "config.log.level"}; !equalStrings(delta.GetChangedFields(), want) {
					t.Errorf("%s: changed fields %q, want %q", s.name, delta.GetChangedFields(), want)
				}
				last = delta
			}

			dev.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Progress{Progress: &devicev1.Progress{
				JobId: last.GetJobId(), DesiredVersion: last.GetDesiredVersion(), Step: devicev1.Step_STEP_INSTALLING,
			}}})
			report := &devicev1.Report{
				JobId:          last.GetJobId(),
				DesiredVersion: last.GetDesiredVersion(),
				Status:         devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
				Reported:       &devicev1.ReportedState{Bundle: last.GetDesired().GetBundle(), Config: last.GetDesired().GetConfig()},
			}
			envelope := dev.Sign(report, dev.Nonce)
			signed := &devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{Envelope: envelope}}}
			dev.Send(signed)
			accepted := dev.Recv().GetAccepted()
			if accepted.GetDesiredVersion() != 3 || accepted.GetJobId() != last.GetJobId() || accepted.GetSuperseded() {
				t.Fatalf("answer to the report: %v, want Accepted for version 3", accepted)
			}

			// A replayed report is acknowledged as a repeat and changes
			// nothing; one that says something else about the same job is
			// rejected.
			dev.Send(signed)
			if again := dev.Recv().GetAccepted(); !again.GetRepeated() || again.GetReportedVersion() != accepted.GetReportedVersion() {
				t.Fatalf("answer to a replayed report: %v, want Accepted, repeated, at reported version %d", again, accepted.GetReportedVersion())
			}
			report.Status = devicev1.JobStatus_JOB_STATUS_ROLLED_BACK
			dev.SendReport(report)
			rejected := dev.Recv().GetRejected()
			if rejected.GetCode() != devicev1.RejectCode_REJECT_CODE_STALE || rejected.GetCurrentDesiredVersion() != 3 {
				t.Fatalf("answer to another report on an ended job: %v, want Rejected STALE", rejected)
			}

			got, err := f.Fleet(t).GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
			if err != nil {
				t.Fatal(err)
			}
			d := got.Msg.GetDevice()
			if d.GetReported().GetDesiredVersion() != 3 ||
				d.GetReported().GetState().GetBundle().GetTargetPath() != last.GetDesired().GetBundle().GetTargetPath() ||
				d.GetJob().GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED ||
				d.GetReported().GetAgentVersion() != "ferry-agent/test" || d.GetLastSeenTime() == nil {
				t.Errorf("device after the report: %v", d)
			}

			// The signed report is kept and verifies offline.
			att, err := f.Fleet(t).GetAttestation(ctx, connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: "dev-1", JobId: last.GetJobId()}))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(att.Msg.GetEnvelope(), envelope) {
				t.Error("stored envelope differs from the one sent")
			}
			st, _, err := attest.Verify(att.Msg.GetEnvelope(), att.Msg.GetCertificateChain(), f.CAPool(t), "ferry.test", time.Time{})
			if err != nil || st.Predicate.JobID != last.GetJobId() || st.Predicate.Status != "SUCCEEDED" {
				t.Errorf("offline verification: %+v, %v", st.Predicate, err)
			}

			// The history has each step, newest first, down to the Hello
			// that claimed fw-1.0, which no report had shown.
			evs, err := f.Fleet(t).ListDeviceEvents(ctx, connect.NewRequest(&fleetv1.ListDeviceEventsRequest{DeviceId: "dev-1"}))
			if err != nil {
				t.Fatal(err)
			}
			var kinds []string
			for _, ev := range evs.Msg.GetEvents() {
				kinds = append(kinds, ev.GetKind()+":"+ev.GetStatus().String())
			}
			want := []string{"job_ended:JOB_STATUS_SUCCEEDED", "job_progress:JOB_STATUS_IN_PROGRESS",
				"desired_set:JOB_STATUS_QUEUED", "desired_set:JOB_STATUS_QUEUED", "desired_set:JOB_STATUS_QUEUED",
				"hello_claim:JOB_STATUS_UNSPECIFIED"}
			if !equalStrings(kinds, want) {
				t.Errorf("events %q, want %q", kinds, want)
			}
		})
	}
}

// TestDeltaOnReconnect: a change made while the device is offline reaches it
// when it says hello with an older applied version, and not when it is up
// to date.
func TestDeltaOnReconnect(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			f := ferrytest.Start(t, backend, nil)
			f.Publish(t, "gw/fw.bin")
			ctx := context.Background()
			for range 2 {
				_, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
					DeviceId: "dev-2", Document: &devicev1.DesiredDocument{Bundle: bundle("gw/fw.bin")},
				}))
				if err != nil {
					t.Fatal(err)
				}
			}
			dev := f.OpenDevice(t, "dev-2", &devicev1.Hello{LastAppliedDesiredVersion: 1})
			if v := dev.Recv().GetDelta().GetDesiredVersion(); v != 2 {
				t.Fatalf("delta on hello: version %d, want 2", v)
			}
			dev.Close()

			upToDate := f.OpenDevice(t, "dev-2", &devicev1.Hello{LastAppliedDesiredVersion: 2})
			upToDate.SendReport(&devicev1.Report{
				JobId: "job-x", DesiredVersion: 9, Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
			})
			// The first message is the answer to the report: no Delta came.
			msg := upToDate.Recv()
			if msg.GetRejected().GetCode() != devicev1.RejectCode_REJECT_CODE_UNKNOWN_VERSION {
				t.Fatalf("first message to an up-to-date device: %v", msg)
			}
		})
	}
}

// TestSupersededReport: a report for an older desired version is recorded,
// closes that job as superseded, and is followed by the newest Delta.
func TestSupersededReport(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	ctx := context.Background()
	dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{})
	set := func(path string) {
		_, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
			DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: bundle(path)},
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	f.Publish(t, "a.bin", "b.bin")
	set("a.bin")
	first := dev.Recv().GetDelta()
	set("b.bin")
	second := dev.Recv().GetDelta()
	dev.SendReport(&devicev1.Report{
		JobId: first.GetJobId(), DesiredVersion: 1, Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: &devicev1.ReportedState{Bundle: bundle("a.bin")},
	})
	if a := dev.Recv().GetAccepted(); !a.GetSuperseded() {
		t.Fatalf("answer: %v, want Accepted and superseded", a)
	}
	again := dev.Recv().GetDelta()
	if !proto.Equal(again, second) {
		t.Errorf("after a superseded report: %v, want the newest delta %v", again, second)
	}
}

func postJSON(t *testing.T, f *ferrytest.Ferryd, path string, req, resp proto.Message) {
	t.Helper()
	body, err := protojson.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	hreq, _ := http.NewRequest(http.MethodPost, f.APIURL()+path, bytes.NewReader(body))
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Authorization", "Bearer "+f.OperatorToken(t))
	hresp, err := f.HTTPClient(t).Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	defer hresp.Body.Close()
	raw, _ := io.ReadAll(hresp.Body)
	if hresp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s: %s", path, hresp.Status, raw)
	}
	if err := protojson.Unmarshal(raw, resp); err != nil {
		t.Fatalf("POST %s: %v in %s", path, err, raw)
	}
	if !json.Valid(raw) {
		t.Fatalf("POST %s: not JSON: %s", path, raw)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// BenchmarkUpdateCycle measures one whole update round trip through a real
// ferryd: SetDesiredState over Connect, the Delta on the device's stream,
// the device's Report, and the Accepted answer.
func BenchmarkUpdateCycle(b *testing.B) {
	for _, backend := range ferrytest.Backends {
		b.Run(string(backend), func(b *testing.B) {
			f := ferrytest.Start(b, backend, func(cfg *server.Config) { cfg.Device.MessagesPerSecond = 1e9 })
			f.Publish(b, "gw/fw.bin")
			ctx := context.Background()
			fleet := f.Fleet(b)
			dev := f.OpenDevice(b, "dev-1", &devicev1.Hello{})
			req := connect.NewRequest(&fleetv1.SetDesiredStateRequest{
				DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: bundle("gw/fw.bin")},
			})
			b.ReportAllocs()
			for b.Loop() {
				if _, err := fleet.SetDesiredState(ctx, req); err != nil {
					b.Fatal(err)
				}
				delta := dev.Recv().GetDelta()
				dev.SendReport(&devicev1.Report{
					JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(),
					Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, Reported: &devicev1.ReportedState{Bundle: bundle("gw/fw.bin")},
				})
				if dev.Recv().GetAccepted() == nil {
					b.Fatal("report not accepted")
				}
			}
		})
	}
}

// TestManyInstances: two ferryd instances share one Redis; a desired state
// set through A reaches the device whose stream is on B, promptly, and a
// device that was offline gets the newest state from either.
func TestManyInstances(t *testing.T) {
	a := ferrytest.Start(t, ferrytest.Redis, nil)
	b := a.StartPeer(t, nil)
	a.Publish(t, "gw/fw.bin")
	ctx := context.Background()
	dev := a.OpenDeviceOn(t, b, "dev-1", &devicev1.Hello{})
	// A round trip makes sure B holds the stream before A changes anything.
	dev.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{}}})
	if dev.Recv().GetRejected() == nil {
		t.Fatal("no answer from B")
	}
	for v := uint64(1); v <= 3; v++ {
		resp, err := a.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
			DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: bundle("gw/fw.bin")},
		}))
		if err != nil {
			t.Fatal(err)
		}
		delta := dev.Recv().GetDelta()
		if delta.GetDesiredVersion() != v || delta.GetJobId() != resp.Msg.GetDevice().GetDesired().GetJobId() {
			t.Fatalf("on B: %v, want version %d set on A", delta, v)
		}
	}
	// B sees what A wrote, and the other way round.
	got, err := b.Fleet(t).GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
	if err != nil || got.Msg.GetDevice().GetDesired().GetVersion() != 3 {
		t.Fatalf("GetDevice on B: %v, %v", got, err)
	}
}

// TestDeltaWrittenByAnotherInstance: a desired state written through
// another instance's store reaches the stream by the notice that store
// sends to the device's holder (no stream re-reads on a timer).
func TestDeltaWrittenByAnotherInstance(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Redis, func(cfg *server.Config) { cfg.Device.ResyncInterval = time.Hour })
	dev := f.OpenDevice(t, "dev-2", &devicev1.Hello{})
	dev.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{}}})
	if dev.Recv().GetRejected() == nil {
		t.Fatal("no answer")
	}
	// Write through another instance's store.
	s, err := redis.Open(context.Background(), f.Config().RedisURL, f.Config().RedisPrefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.SetDesired(context.Background(), "dev-2", 0, store.Desired{Version: 1, JobID: "job-quiet",
		Bundle: store.Bundle{TargetPath: "gw/fw.bin", Length: 1, SHA256: sum}}, store.Write{}); err != nil {
		t.Fatal(err)
	}
	if d := dev.Recv().GetDelta(); d.GetJobId() != "job-quiet" {
		t.Fatalf("got %v, want the quietly written delta", d)
	}
}

// TestPingAnswerRecordsSeen: a device that answers the server's pings is
// recorded as seen, though it sends nothing else: a quiet device is not a
// silent one (the fleet summary, a rollout's soak).
func TestPingAnswerRecordsSeen(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) { cfg.Device.PingInterval = 100 * time.Millisecond })
	fleet := f.Fleet(t)
	lastSeen := func() time.Time {
		r, err := fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-3"}))
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg.GetDevice().GetLastSeenTime().AsTime()
	}
	dev := f.OpenDevice(t, "dev-3", &devicev1.Hello{})
	connected := lastSeen()
	deadline := time.Now().Add(10 * time.Second)
	for !lastSeen().After(connected) {
		if time.Now().After(deadline) {
			t.Fatal("answered pings did not move the device's last-seen time")
		}
		m, err := dev.Stream.Recv() // dev.Recv skips pings
		if err != nil {
			t.Fatal(err)
		}
		if p := m.GetPing(); p != nil {
			dev.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Ack{Ack: &devicev1.Ack{Of: &devicev1.Ack_PingId{PingId: p.GetId()}}}})
		}
	}
}

// TestSignedReports: only a report signed by the stream's own device, with
// this stream's nonce, is recorded; everything else is rejected and
// changes nothing.
func TestSignedReports(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			f := ferrytest.Start(t, backend, nil)
			f.Publish(t, "gw/fw.bin")
			ctx := context.Background()
			resp, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
				DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: bundle("gw/fw.bin")},
			}))
			if err != nil {
				t.Fatal(err)
			}
			job := resp.Msg.GetDevice().GetDesired().GetJobId()
			ok := &devicev1.Report{JobId: job, DesiredVersion: 1, Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
				Reported: &devicev1.ReportedState{Bundle: bundle("gw/fw.bin")}}
			other := f.OpenDevice(t, "dev-2", &devicev1.Hello{})
			dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{})
			if dev.Recv().GetDelta() == nil {
				t.Fatal("no delta")
			}
			// dev-2 signs a report about dev-1 with its own key.
			foreign := *other
			foreign.ID = "dev-1"
			withEnvelope := func(env []byte) *devicev1.SyncRequest {
				return &devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{Envelope: env}}}
			}
			// A good envelope with one more field set beside it: malformed.
			mixed := func(set func(r *devicev1.Report)) *devicev1.SyncRequest {
				m := withEnvelope(dev.Sign(ok, dev.Nonce))
				set(m.GetReport())
				return m
			}
			const (
				unverified = devicev1.RejectCode_REJECT_CODE_UNVERIFIED
				invalid    = devicev1.RejectCode_REJECT_CODE_INVALID
			)
			tests := []struct {
				name string
				msg  *devicev1.SyncRequest
				want devicev1.RejectCode
			}{
				{"unsigned", &devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: ok}}, unverified},
				{"another stream's nonce", withEnvelope(dev.Sign(ok, other.Nonce)), unverified},
				{"signed by another device", withEnvelope(foreign.Sign(ok, dev.Nonce)), unverified},
				{"garbage envelope", withEnvelope([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[]}`)), unverified},
				{"envelope and job_id", mixed(func(r *devicev1.Report) { r.JobId = job }), invalid},
				{"envelope and desired_version", mixed(func(r *devicev1.Report) { r.DesiredVersion = 1 }), invalid},
				{"envelope and status", mixed(func(r *devicev1.Report) { r.Status = devicev1.JobStatus_JOB_STATUS_SUCCEEDED }), invalid},
				{"envelope and step", mixed(func(r *devicev1.Report) { r.Step = devicev1.Step_STEP_INSTALLING }), invalid},
				{"envelope and error_code", mixed(func(r *devicev1.Report) { r.ErrorCode = "x" }), invalid},
				{"envelope and message", mixed(func(r *devicev1.Report) { r.Message = "x" }), invalid},
				{"envelope and reported", mixed(func(r *devicev1.Report) { r.Reported = &devicev1.ReportedState{} }), invalid},
				{"foreign envelope and fields", func() *devicev1.SyncRequest {
					m := withEnvelope(foreign.Sign(ok, dev.Nonce))
					m.GetReport().JobId = job
					return m
				}(), invalid},
			}
			for _, tt := range tests {
				dev.Send(tt.msg)
				rej := dev.Recv().GetRejected()
				if rej.GetCode() != tt.want || rej.GetCurrentDesiredVersion() != 1 {
					t.Errorf("%s: %v, want Rejected %v", tt.name, rej, tt.want)
				}
			}
			got, err := f.Fleet(t).GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
			if err != nil {
				t.Fatal(err)
			}
			if r := got.Msg.GetDevice().GetReported(); r.GetDesiredVersion() != 0 {
				t.Fatalf("rejected reports changed the device: %v", r)
			}
			if _, err := f.Fleet(t).GetAttestation(ctx, connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: "dev-1", JobId: job})); connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("attestation after rejected reports: %v, want NotFound", err)
			}
			dev.SendReport(ok)
			if dev.Recv().GetAccepted() == nil {
				t.Fatal("a good signed report was not accepted")
			}
		})
	}
}

// TestUnsignedReportsWhenAllowed: with AllowUnsignedReports, a plain report
// is recorded (and no attestation is kept).
func TestUnsignedReportsWhenAllowed(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) { cfg.AllowUnsignedReports = true })
	ctx := context.Background()
	dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{})
	if _, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Config: map[string]string{"a": "b"}},
	})); err != nil {
		t.Fatal(err)
	}
	delta := dev.Recv().GetDelta()
	dev.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{
		JobId: delta.GetJobId(), DesiredVersion: 1, Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: &devicev1.ReportedState{Config: map[string]string{"a": "b"}},
	}}})
	if dev.Recv().GetAccepted() == nil {
		t.Fatal("unsigned report not accepted")
	}
	if _, err := f.Fleet(t).GetAttestation(ctx, connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: "dev-1", JobId: delta.GetJobId()})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("attestation of an unsigned report: %v, want NotFound", err)
	}
	// The API says the state came from an unsigned report.
	got, err := f.Fleet(t).GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
	if err != nil {
		t.Fatal(err)
	}
	if rep := got.Msg.GetDevice().GetReported(); rep.GetSigned() || rep.GetState().GetConfig()["a"] != "b" {
		t.Errorf("reported state after an unsigned report: %v; want a=b, not marked signed", rep)
	}
}

// TestNoDeltaLostAtConnect: a desired state set while a device is opening
// its stream reaches it at once, whichever of the two commits first (with
// the periodic resync turned off, a lost change notice would show).
func TestNoDeltaLostAtConnect(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) { cfg.Device.ResyncInterval = time.Hour })
	fleet := f.Fleet(t)
	for i := range 20 {
		set := make(chan uint64, 1)
		go func() {
			resp, err := fleet.SetDesiredState(context.Background(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{
				DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Config: map[string]string{"round": fmt.Sprint(i)}},
			}))
			if err != nil {
				t.Error(err)
				set <- 0
				return
			}
			set <- resp.Msg.GetDevice().GetDesired().GetVersion()
		}()
		dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{LastAppliedDesiredVersion: uint64(i)})
		want := <-set
		for got := uint64(0); got < want; {
			got = dev.Recv().GetDelta().GetDesiredVersion()
		}
		dev.Close()
	}
}
