package server_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

// metricSamples is one read of /metrics: each sample's value by its series, the
// metric name followed by its labels as Prometheus writes them.
type metricSamples map[string]float64

func scrapeMetrics(t *testing.T, f *ferrytest.Ferryd) metricSamples {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, f.APIURL()+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+f.OperatorToken(t))
	resp, err := f.HTTPClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	out := metricSamples{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// value returns the sum of the samples of metric whose labels include every
// one of labels ("name", "value" pairs), and whether there is any.
func (s metricSamples) value(metric string, labels ...string) (sum float64, found bool) {
	for series, v := range s {
		name, rest, _ := strings.Cut(series, "{")
		if name != metric {
			continue
		}
		ok := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(","+rest, ","+labels[i]+`="`+labels[i+1]+`"`) {
				ok = false
				break
			}
		}
		if ok {
			sum, found = sum+v, true
		}
	}
	return sum, found
}

// TestMetricsAfterWalkthrough runs the README walkthrough's steps — publish,
// devices connect, desired state set, a rollout runs, a device reports — and
// checks that /metrics has per-RPC request and latency series for both
// ports and a running rollout's executions by status, and that they move,
// on each backend.
func TestMetricsAfterWalkthrough(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) { testMetricsAfterWalkthrough(t, backend) })
	}
}

func testMetricsAfterWalkthrough(t *testing.T, backend ferrytest.Backend) {
	f := ferrytest.Start(t, backend, nil)
	ctx := context.Background()
	f.Publish(t, testBundle.GetTargetPath(), "gw/fw-2.0.bin")
	hello := &devicev1.Hello{AgentVersion: "ferry-agent/test", Reported: &devicev1.ReportedState{Bundle: ferrytest.Bundle("gw/1.0.0/fw.bin")}}
	dev1 := f.OpenDevice(t, "dev-1", hello)
	dev2 := f.OpenDevice(t, "dev-2", hello)

	before := scrapeMetrics(t, f)

	// An operator sets a device's desired state and reads an unknown
	// device (Connect), and fetches metadata.
	if _, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "dev-3", Document: &devicev1.DesiredDocument{Bundle: ferrytest.Bundle("gw/fw-2.0.bin")},
	})); err != nil {
		t.Fatal(err)
	}
	_, err := f.Fleet(t).GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "gw-404"}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("GetDevice of an unknown device: %v, want NotFound", err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.APIURL()+"/tuf/metadata/timestamp.json", nil)
	req.Header.Set("Authorization", "Bearer "+f.OperatorToken(t))
	resp, err := f.HTTPClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// A rollout to two devices: one reports success, the other has not
	// answered yet, so the rollout keeps running.
	rollouts := fleetv1connect.NewRolloutServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
	created, err := rollouts.CreateRollout(ctx, connect.NewRequest(&fleetv1.CreateRolloutRequest{Bundle: testBundle, DeviceIds: []string{"dev-1", "dev-2"}}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.GetRollout().GetId()
	delta := dev1.Recv().GetDelta()
	if dev2.Recv().GetDelta().GetJobId() == "" || delta.GetJobId() == "" {
		t.Fatal("no job from the rollout")
	}
	// dev-2 asks for a download token for its job's bundle (gRPC, device
	// port).
	deviceCreds := credentialsv1.NewCredentialServiceClient(f.DeviceConn(t, f.DeviceTLS(t, "dev-2")))
	if _, err := deviceCreds.IssueDownloadToken(ctx, &credentialsv1.IssueDownloadTokenRequest{TargetPath: testBundle.GetTargetPath()}); err != nil {
		t.Fatal(err)
	}
	dev1.SendReport(&devicev1.Report{
		JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: &devicev1.ReportedState{Bundle: delta.GetDesired().GetBundle(), Config: delta.GetDesired().GetConfig()},
	})
	if a := dev1.Recv().GetAccepted(); a.GetJobId() != delta.GetJobId() {
		t.Fatalf("answer to the report: %v, want Accepted", a)
	}

	var after metricSamples
	waitFor(t, 10*time.Second, "the rollout's counts in /metrics", func() bool {
		after = scrapeMetrics(t, f)
		n, _ := after.value("ferry_rollout_executions", "rollout", id, "status", "SUCCEEDED")
		return n == 1
	})
	dev1.Close()
	waitFor(t, 10*time.Second, "a closed stream in /metrics", func() bool {
		after = scrapeMetrics(t, f)
		// The stream's own counter rises in its handler, the gRPC one when
		// the handler has returned.
		n, _ := after.value("ferry_device_streams_closed_total")
		handled, _ := after.value("ferry_grpc_server_handled_total", "grpc_service", "ferry.device.v1.DeviceService", "grpc_method", "Sync")
		return n >= 1 && handled >= 1
	})

	type series struct {
		metric string
		labels []string
	}
	api := func(metric, method string, more ...string) series {
		return series{metric, append([]string{"service", "ferry.fleet.v1." + strings.Split(method, ".")[0], "method", strings.Split(method, ".")[1]}, more...)}
	}
	grpcRPC := func(metric, service, method string, more ...string) series {
		return series{metric, append([]string{"grpc_service", service, "grpc_method", method}, more...)}
	}
	tests := []struct {
		name string
		s    series
		// min is how much the sample must have grown since before (a
		// series absent before counts from 0).
		min float64
	}{
		{"API calls started", api("ferry_api_server_started_total", "FleetService.SetDesiredState"), 1},
		{"API calls handled, ok", api("ferry_api_server_handled_total", "FleetService.SetDesiredState", "code", "ok"), 1},
		{"API calls handled, by error code", api("ferry_api_server_handled_total", "FleetService.GetDevice", "code", "not_found"), 1},
		{"API latency", api("ferry_api_server_handling_seconds_count", "FleetService.SetDesiredState"), 1},
		{"API latency buckets", api("ferry_api_server_handling_seconds_bucket", "FleetService.SetDesiredState", "le", "+Inf"), 1},
		{"rollout API calls", api("ferry_api_server_handled_total", "RolloutService.CreateRollout", "code", "ok"), 1},
		{"device port unary calls", grpcRPC("ferry_grpc_server_handled_total", "ferry.credentials.v1.CredentialService", "IssueDownloadToken", "grpc_code", "OK"), 1},
		{"device port unary latency", grpcRPC("ferry_grpc_server_handling_seconds_count", "ferry.credentials.v1.CredentialService", "IssueDownloadToken"), 1},
		{"device streams started (before the first scrape)", grpcRPC("ferry_grpc_server_started_total", "ferry.device.v1.DeviceService", "Sync"), 0},
		{"device streams handled", grpcRPC("ferry_grpc_server_handled_total", "ferry.device.v1.DeviceService", "Sync"), 1},
		{"device stream latency", grpcRPC("ferry_grpc_server_handling_seconds_count", "ferry.device.v1.DeviceService", "Sync"), 1},
		{"device messages", series{"ferry_grpc_server_msg_received_total", []string{"grpc_method", "Sync"}}, 1},
		{"stream closed by the device", series{"ferry_device_streams_closed_total", nil}, 1},
		{"reports accepted", series{"ferry_device_reports_total", []string{"outcome", "accepted"}}, 1},
		{"deltas sent", series{"ferry_deltas_sent_total", nil}, 2},
		{"metadata downloads", series{"ferry_downloads_total", []string{"kind", "metadata"}}, 1},
		{"metadata bytes", series{"ferry_download_bytes_total", []string{"kind", "metadata"}}, 1},
		{"store latency", series{"ferry_store_operation_duration_seconds_count", []string{"operation", "SetDesired", "outcome", "ok"}}, 1},
		{"store errors", series{"ferry_store_operation_duration_seconds_count", []string{"operation", "GetDevice", "outcome", "not_found"}}, 1},
		{"rollout executions succeeded", series{"ferry_rollout_executions", []string{"rollout", id, "status", "SUCCEEDED"}}, 1},
		{"rollouts running", series{"ferry_rollouts", []string{"state", "RUNNING"}}, 1},
	}
	for _, tt := range tests {
		got, ok := after.value(tt.s.metric, tt.s.labels...)
		if !ok {
			t.Errorf("%s: no %s%q in /metrics", tt.name, tt.s.metric, tt.s.labels)
			continue
		}
		was, _ := before.value(tt.s.metric, tt.s.labels...)
		if got-was < tt.min {
			t.Errorf("%s: %s%q went from %g to %g, want a rise of at least %g", tt.name, tt.s.metric, tt.s.labels, was, got, tt.min)
		}
	}
	// The device that has not answered is counted under another status.
	var others float64
	for series, v := range after {
		if strings.HasPrefix(series, "ferry_rollout_executions{") && strings.Contains(series, `rollout="`+id+`"`) && !strings.Contains(series, "SUCCEEDED") {
			others += v
		}
	}
	if others != 1 {
		t.Errorf("executions of %s not succeeded: %g, want 1 (dev-2)", id, others)
	}
	// Every role of the served metadata has time left.
	for _, role := range []string{"root", "targets", "snapshot", "timestamp"} {
		if left, ok := after.value("ferry_tuf_metadata_expiry_seconds", "role", role); !ok || left <= 0 {
			t.Errorf("ferry_tuf_metadata_expiry_seconds{role=%q}: %g, %v; want a positive value", role, left, ok)
		}
	}
}

// TestMetricsDomainSeries does one thing at a time and checks that the
// series that counts it moves: rejected reports by code, downloads and
// their refusals and ranges, enrollments and renewals.
func TestMetricsDomainSeries(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	ctx := context.Background()
	f.Publish(t, testBundle.GetTargetPath())
	dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{AgentVersion: "ferry-agent/test"})
	get := func(path, auth, rangeHeader string) int {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.APIURL()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		if rangeHeader != "" {
			req.Header.Set("Range", rangeHeader)
		}
		resp, err := f.HTTPClient(t).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	target := "/tuf/targets/gw/2.0.0/" + ferrytest.BundleSHA256 + ".fw.bin"
	var enrolled *device

	tests := []struct {
		name   string
		do     func(t *testing.T)
		metric string
		labels []string
		rise   float64
	}{
		{"report on a version never set", func(t *testing.T) {
			dev.SendReport(&devicev1.Report{JobId: "job-unknown", DesiredVersion: 9, Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED})
			if dev.Recv().GetRejected() == nil {
				t.Fatal("report on a version never set not rejected")
			}
		}, "ferry_device_reports_total", []string{"outcome", "rejected", "code", "unknown_version"}, 1},
		{"metadata without credentials", func(t *testing.T) {
			if code := get("/tuf/metadata/timestamp.json", "", ""); code != http.StatusUnauthorized {
				t.Fatalf("GET timestamp.json without credentials: %d", code)
			}
		}, "ferry_downloads_refused_total", []string{"kind", "metadata", "reason", "unauthenticated"}, 1},
		{"a whole target", func(t *testing.T) {
			if code := get(target, f.OperatorToken(t), ""); code != http.StatusOK {
				t.Fatalf("GET target: %d", code)
			}
		}, "ferry_download_bytes_total", []string{"kind", "target"}, float64(len(ferrytest.BundleData))},
		{"a resumed target", func(t *testing.T) {
			if code := get(target, f.OperatorToken(t), "bytes=10-"); code != http.StatusPartialContent {
				t.Fatalf("GET target from byte 10: %d", code)
			}
		}, "ferry_download_ranges_total", nil, 1},
		{"target downloads", func(t *testing.T) {
			get(target, f.OperatorToken(t), "")
		}, "ferry_downloads_total", []string{"kind", "target"}, 1},
		{"an unknown target", func(t *testing.T) {
			if code := get("/tuf/targets/gw/9.9.9/"+ferrytest.BundleSHA256+".fw.bin", f.OperatorToken(t), ""); code != http.StatusNotFound {
				t.Fatalf("GET an unknown target: %d", code)
			}
		}, "ferry_downloads_refused_total", []string{"kind", "target", "reason", "not_found"}, 1},
		{"an enrollment", func(t *testing.T) {
			enrolled = enroll(t, f, "gw-9")
		}, "ferry_enrollments_total", []string{"method", "token", "outcome", "ok"}, 1},
		{"an enrollment with a bad token", func(t *testing.T) {
			key, err := credentials.NewKey()
			if err != nil {
				t.Fatal(err)
			}
			_, err = credentialClient(t, f, nil).Enroll(ctx, connect.NewRequest(&credentialsv1.EnrollRequest{Csr: newCSR(t, key), EnrollmentToken: "ferry_enroll_bogus"}))
			if err == nil {
				t.Fatal("enrolled with a bogus token")
			}
		}, "ferry_enrollments_total", []string{"method", "token", "outcome", "error"}, 1},
		{"a renewal", func(t *testing.T) {
			key, err := credentials.NewKey()
			if err != nil {
				t.Fatal(err)
			}
			c := credentialsv1.NewCredentialServiceClient(f.DeviceConn(t, enrolled.tls))
			if _, err := c.RenewCertificate(ctx, &credentialsv1.RenewCertificateRequest{Csr: newCSR(t, key)}); err != nil {
				t.Fatal(err)
			}
		}, "ferry_certificate_renewals_total", []string{"outcome", "ok"}, 1},
		{"a renewal with a bad request", func(t *testing.T) {
			c := credentialsv1.NewCredentialServiceClient(f.DeviceConn(t, enrolled.tls))
			if _, err := c.RenewCertificate(ctx, &credentialsv1.RenewCertificateRequest{Csr: []byte("not a CSR")}); err == nil {
				t.Fatal("renewed with a bad CSR")
			}
		}, "ferry_certificate_renewals_total", []string{"outcome", "error"}, 1},
	}
	for _, tt := range tests {
		before, _ := scrapeMetrics(t, f).value(tt.metric, tt.labels...)
		tt.do(t)
		after, ok := scrapeMetrics(t, f).value(tt.metric, tt.labels...)
		if !ok || after-before != tt.rise {
			t.Errorf("%s: %s%q went from %g to %g (present: %v), want a rise of %g", tt.name, tt.metric, tt.labels, before, after, ok, tt.rise)
		}
	}
}

// TestMetricsRolloutAbort checks the abort and rollback counters: a rollout
// whose abort rule fires gives the devices it moved the rollback bundle.
func TestMetricsRolloutAbort(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	ctx := context.Background()
	rollback := ferrytest.Bundle("gw/1.0.0/fw.bin")
	f.Publish(t, testBundle.GetTargetPath(), rollback.GetTargetPath())
	hello := &devicev1.Hello{AgentVersion: "ferry-agent/test", Reported: &devicev1.ReportedState{Bundle: rollback}}
	devs := []*ferrytest.Device{f.OpenDevice(t, "dev-1", hello), f.OpenDevice(t, "dev-2", hello)}
	before := scrapeMetrics(t, f)

	rollouts := fleetv1connect.NewRolloutServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
	created, err := rollouts.CreateRollout(ctx, connect.NewRequest(&fleetv1.CreateRolloutRequest{
		Bundle: testBundle, DeviceIds: []string{"dev-1", "dev-2"}, RollbackBundle: rollback,
		AbortRules: []*fleetv1.AbortRule{{Status: devicev1.JobStatus_JOB_STATUS_FAILED, Percent: 50, MinExecutions: 2}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	for i, status := range []devicev1.JobStatus{devicev1.JobStatus_JOB_STATUS_SUCCEEDED, devicev1.JobStatus_JOB_STATUS_FAILED} {
		d := devs[i]
		delta := d.Recv().GetDelta()
		d.SendReport(&devicev1.Report{
			JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: status,
			Reported: &devicev1.ReportedState{Bundle: delta.GetDesired().GetBundle()},
		})
		if d.Recv().GetAccepted() == nil {
			t.Fatalf("%s: report not accepted", d.ID)
		}
	}
	// dev-1 moved to the new bundle and gets the rollback bundle.
	if got := devs[0].Recv().GetDelta().GetDesired().GetBundle().GetTargetPath(); got != rollback.GetTargetPath() {
		t.Fatalf("dev-1 after the abort was given %q, want the rollback bundle", got)
	}
	var after metricSamples
	waitFor(t, 10*time.Second, "the aborted rollout in /metrics", func() bool {
		after = scrapeMetrics(t, f)
		n, _ := after.value("ferry_rollouts", "state", "ABORTED")
		return n == 1
	})
	tests := []struct {
		metric string
		min    float64
	}{
		{"ferry_rollout_aborts_total", 1},
		{"ferry_rollout_rollbacks_total", 1},
		{"ferry_rollouts_rolled_back", 1},
	}
	for _, tt := range tests {
		was, _ := before.value(tt.metric)
		got, ok := after.value(tt.metric)
		if !ok || got-was < tt.min {
			t.Errorf("%s went from %g to %g (present: %v), want a rise of at least %g", tt.metric, was, got, ok, tt.min)
		}
	}
	if _, ok := after.value("ferry_rollout_executions", "rollout", created.Msg.GetRollout().GetId()); ok {
		t.Error("an aborted rollout still has execution series")
	}
}
