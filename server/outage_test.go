package server_test

import (
	"crypto/tls"
	"errors"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/internal/testredis"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/server"
)

// waitFor polls cond until it holds, or fails the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
	}
}

// grpcRetryDelay returns the RetryInfo hint in a gRPC status.
func grpcRetryDelay(err error) (time.Duration, bool) {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// wantConnectUnavailable checks that err is Unavailable with the store's
// retry hint (RetryInfo, and Retry-After on unary Connect calls).
func wantConnectUnavailable(t *testing.T, what string, err error, retryAfterHeader bool) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable {
		t.Errorf("%s with the store down: %v, want unavailable", what, err)
		return
	}
	var delay time.Duration
	for _, d := range ce.Details() {
		if m, derr := d.Value(); derr == nil {
			if ri, ok := m.(*errdetails.RetryInfo); ok {
				delay = ri.GetRetryDelay().AsDuration()
			}
		}
	}
	if delay != server.StoreRetryDelay {
		t.Errorf("%s: retry hint %v, want RetryInfo of %v", what, delay, server.StoreRetryDelay)
	}
	if retryAfterHeader && ce.Meta().Get("Retry-After") == "" {
		t.Errorf("%s: no Retry-After in %v", what, ce.Meta())
	}
}

// TestStoreOutage: Redis is killed in the middle of a rollout and started
// again. While it is down, the API answers Unavailable with a retry hint
// (Connect and gRPC), so do the token issue and enrollment; an idle device
// stream stays open (it reads nothing on a timer), one that reports ends
// Unavailable with the retry hint, and new ones are refused so; readiness
// and gRPC health go down. When it is back, readiness and health come back
// by themselves, the stream that stayed open reports on it, the other
// device reconnects, both finish their jobs, the report acknowledged
// before the outage is kept, and no job failed for the outage.
//
// The devices are protocol-level clients (internal/ferrytest) that
// reconnect as an agent does; the agent's own handling of an Unavailable
// token is tested with the agent.
func TestStoreOutage(t *testing.T) {
	ctx := t.Context()
	redis := testredis.Durable(t)
	f := ferrytest.Start(t, ferrytest.Redis, func(cfg *server.Config) {
		cfg.RedisURL = redis.URL()
	})
	f.Publish(t, testBundle.GetTargetPath())
	ids := []string{"dev-1", "dev-2", "dev-3"}
	hello := &devicev1.Hello{AgentVersion: "ferry-agent/test", Reported: &devicev1.ReportedState{Bundle: ferrytest.Bundle("gw/1.0.0/fw.bin")}}
	devs := map[string]*ferrytest.Device{}
	for _, id := range ids {
		devs[id] = f.OpenDevice(t, id, hello)
	}
	rollouts := fleetv1connect.NewRolloutServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
	created, err := rollouts.CreateRollout(ctx, connect.NewRequest(&fleetv1.CreateRolloutRequest{Bundle: testBundle, Selector: "group=dev"}))
	if err != nil {
		t.Fatal(err)
	}
	rolloutID := created.Msg.GetRollout().GetId()
	deltas := map[string]*devicev1.Delta{}
	for _, id := range ids {
		deltas[id] = devs[id].Recv().GetDelta()
		if deltas[id].GetJobId() == "" {
			t.Fatalf("%s: no job from the rollout", id)
		}
	}
	succeed := func(d *ferrytest.Device, delta *devicev1.Delta) {
		t.Helper()
		d.SendReport(&devicev1.Report{
			JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
			Reported: &devicev1.ReportedState{Bundle: delta.GetDesired().GetBundle(), Config: delta.GetDesired().GetConfig()},
		})
		if a := d.Recv().GetAccepted(); a.GetJobId() != delta.GetJobId() {
			t.Fatalf("%s: answer to the report: %v, want Accepted", d.ID, a)
		}
	}
	succeed(devs["dev-1"], deltas["dev-1"]) // acknowledged before the outage

	// An enrollment token and a download token got before the outage, and
	// the clients used below.
	added, err := f.Fleet(t).AddDevice(ctx, connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: "gw-8"}))
	if err != nil {
		t.Fatal(err)
	}
	dev2Conn := f.DeviceConn(t, f.DeviceTLS(t, "dev-2"))
	deviceCreds := credentialsv1.NewCredentialServiceClient(dev2Conn)
	once, err := deviceCreds.IssueDownloadToken(ctx, &credentialsv1.IssueDownloadTokenRequest{TargetPath: testBundle.GetTargetPath(), SingleUse: true})
	if err != nil {
		t.Fatalf("IssueDownloadToken before the outage: %v", err)
	}
	healthConn, err := grpc.NewClient(f.APIAddr(), grpc.WithTransportCredentials(grpccreds.NewTLS(
		&tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer healthConn.Close()
	health := func() healthpb.HealthCheckResponse_ServingStatus {
		resp, err := healthpb.NewHealthClient(healthConn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatalf("gRPC health: %v", err)
		}
		return resp.GetStatus()
	}
	if code, body := probe(t, f, http.MethodGet, server.ReadinessPath); code != http.StatusOK || health() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("before the outage: readiness %d %q, health %v", code, body, health())
	}

	redis.Kill(t)

	// Readiness and health go down, liveness stays.
	waitFor(t, 10*time.Second, "readiness down", func() bool {
		code, body := probe(t, f, http.MethodGet, server.ReadinessPath)
		return code == http.StatusServiceUnavailable && body == "store unreachable"
	})
	waitFor(t, 5*time.Second, "gRPC health NOT_SERVING", func() bool { return health() == healthpb.HealthCheckResponse_NOT_SERVING })
	// /metrics still answers, without the series read from the store.
	if m := scrapeMetrics(t, f); len(m) == 0 {
		t.Error("/metrics during the outage has no series")
	} else if _, ok := m.value("ferry_rollouts"); ok {
		t.Error("/metrics during the outage has rollout series read from the store")
	}
	if code, _ := probe(t, f, http.MethodGet, server.LivenessPath); code != http.StatusOK {
		t.Errorf("liveness with the store down: %d, want 200", code)
	}

	// A report needs the store: its stream ends Unavailable, with the
	// retry hint. dev-3's stream, idle, stays open (checked after the outage).
	devs["dev-2"].SendReport(&devicev1.Report{
		JobId: deltas["dev-2"].GetJobId(), DesiredVersion: deltas["dev-2"].GetDesiredVersion(), Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: deltasState(deltas["dev-2"]),
	})
	if _, err := devs["dev-2"].RecvErr(); status.Code(err) != codes.Unavailable {
		t.Errorf("dev-2: stream ended with %v, want Unavailable", err)
	} else if d, ok := grpcRetryDelay(err); !ok || d != server.StoreRetryDelay {
		t.Errorf("dev-2: stream's end carries retry hint %v (%v), want %v", d, ok, server.StoreRetryDelay)
	}
	// A device that reconnects now is refused the same way.
	stream, err := devicev1.NewDeviceServiceClient(f.DeviceConn(t, f.DeviceTLS(t, "dev-3"))).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("a new stream with the store down: %v, want Unavailable", err)
	}
	// The token issue.
	_, err = deviceCreds.IssueDownloadToken(ctx, &credentialsv1.IssueDownloadTokenRequest{TargetPath: testBundle.GetTargetPath()})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("IssueDownloadToken with the store down: %v, want Unavailable", err)
	} else if d, ok := grpcRetryDelay(err); !ok || d != server.StoreRetryDelay {
		t.Errorf("IssueDownloadToken: retry hint %v (%v), want %v", d, ok, server.StoreRetryDelay)
	}
	// A download whose check needs the store (a single-use token).
	dl, err := http.NewRequest(http.MethodGet, once.GetUrl(), nil)
	if err != nil {
		t.Fatal(err)
	}
	dl.Header.Set("Authorization", "Bearer "+once.GetToken())
	dlClient := &http.Client{Transport: &http2.Transport{TLSClientConfig: f.DeviceTLS(t, "dev-2")}}
	if resp, err := dlClient.Do(dl); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("download with a single-use token, store down: %s, Retry-After %q; want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
		}
	}
	// The API, over Connect and gRPC.
	get := &fleetv1.GetDeviceRequest{DeviceId: "dev-1"}
	_, err = f.Fleet(t).GetDevice(ctx, connect.NewRequest(get))
	wantConnectUnavailable(t, "GetDevice (Connect)", err, true)
	_, err = f.Fleet(t, connect.WithGRPC()).GetDevice(ctx, connect.NewRequest(get))
	wantConnectUnavailable(t, "GetDevice (gRPC)", err, false)
	_, err = f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "dev-2", Document: &devicev1.DesiredDocument{Bundle: testBundle},
	}))
	wantConnectUnavailable(t, "SetDesiredState", err, true)
	_, err = rollouts.GetRollout(ctx, connect.NewRequest(&fleetv1.GetRolloutRequest{RolloutId: rolloutID}))
	wantConnectUnavailable(t, "GetRollout", err, true)
	_, err = f.Fleet(t).AddDevice(ctx, connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: "gw-9"}))
	wantConnectUnavailable(t, "AddDevice", err, true)
	// Enrollment.
	key, err := credentials.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	_, err = credentialClient(t, f, nil).Enroll(ctx, connect.NewRequest(&credentialsv1.EnrollRequest{
		Csr: newCSR(t, key), EnrollmentToken: added.Msg.GetEnrollmentToken(),
	}))
	wantConnectUnavailable(t, "Enroll", err, true)

	redis.Restart(t)

	// Back by themselves.
	waitFor(t, 10*time.Second, "readiness back", func() bool {
		code, _ := probe(t, f, http.MethodGet, server.ReadinessPath)
		return code == http.StatusOK
	})
	waitFor(t, 5*time.Second, "gRPC health SERVING", func() bool { return health() == healthpb.HealthCheckResponse_SERVING })

	// dev-3's stream lived through the outage: it reports on it. dev-2
	// reconnects and gets its job again; dev-1 reconnects up to date.
	succeed(devs["dev-3"], deltas["dev-3"])
	up := &devicev1.Hello{AgentVersion: "ferry-agent/test", Reported: deltasState(deltas["dev-1"]), LastAppliedDesiredVersion: deltas["dev-1"].GetDesiredVersion()}
	devs["dev-1"] = f.OpenDevice(t, "dev-1", up)
	devs["dev-2"] = f.OpenDevice(t, "dev-2", hello)
	if delta := devs["dev-2"].Recv().GetDelta(); delta.GetJobId() != deltas["dev-2"].GetJobId() {
		t.Fatalf("dev-2 after the outage: delta %v, want job %s again", delta, deltas["dev-2"].GetJobId())
	} else {
		succeed(devs["dev-2"], delta)
	}

	// The refused enrollment did not use the token up.
	if _, err := credentialClient(t, f, nil).Enroll(ctx, connect.NewRequest(&credentialsv1.EnrollRequest{
		Csr: newCSR(t, key), EnrollmentToken: added.Msg.GetEnrollmentToken(),
	})); err != nil {
		t.Errorf("Enroll after the outage with the token refused during it: %v", err)
	}

	var final *fleetv1.Rollout
	waitFor(t, 20*time.Second, "rollout ended", func() bool {
		resp, err := rollouts.GetRollout(ctx, connect.NewRequest(&fleetv1.GetRolloutRequest{RolloutId: rolloutID}))
		if err != nil {
			t.Fatalf("GetRollout: %v", err)
		}
		final = resp.Msg.GetRollout()
		return final.GetEndTime() != nil
	})
	if final.GetState() != "COMPLETED" || final.GetCounts()["SUCCEEDED"] != uint64(len(ids)) {
		t.Errorf("rollout after the outage: state %s, counts %v, want COMPLETED with every device SUCCEEDED", final.GetState(), final.GetCounts())
	}
	execs, err := rollouts.ListRolloutExecutions(ctx, connect.NewRequest(&fleetv1.ListRolloutExecutionsRequest{RolloutId: rolloutID}))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range execs.Msg.GetExecutions() {
		if e.GetStatus() != "SUCCEEDED" || e.GetAttempts() != 1 {
			t.Errorf("execution of %s: %s after %d attempts (%s), want SUCCEEDED at the first", e.GetDeviceId(), e.GetStatus(), e.GetAttempts(), e.GetMessage())
		}
	}
	d, err := f.Fleet(t).GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
	if err != nil {
		t.Fatal(err)
	}
	if d.Msg.GetDevice().GetJob().GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED {
		t.Errorf("dev-1's report acknowledged before the outage: job %v", d.Msg.GetDevice().GetJob())
	}
}

func deltasState(d *devicev1.Delta) *devicev1.ReportedState {
	return &devicev1.ReportedState{Bundle: d.GetDesired().GetBundle(), Config: d.GetDesired().GetConfig()}
}
