package server_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	collectortracev1 "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracev1 "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

// otlpReceiver is an OTLP trace receiver on loopback: the collector's
// TraceService over gRPC, or its OTLP/HTTP endpoint (/v1/traces).
type otlpReceiver struct {
	collectortracev1.UnimplementedTraceServiceServer
	mu      sync.Mutex
	spans   []*tracev1.Span
	service map[string]string // span id (hex) -> service.name
}

func (r *otlpReceiver) Export(_ context.Context, req *collectortracev1.ExportTraceServiceRequest) (*collectortracev1.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		name := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				name = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				r.spans = append(r.spans, sp)
				r.service[hex.EncodeToString(sp.GetSpanId())] = name
			}
		}
	}
	return &collectortracev1.ExportTraceServiceResponse{}, nil
}

// ServeHTTP is the OTLP/HTTP endpoint (binary protobuf).
func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	var in collectortracev1.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &in)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	out, _ := r.Export(req.Context(), &in)
	raw, _ := proto.Marshal(out)
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(raw)
}

// startReceiver serves the receiver on a loopback port with protocol and
// returns the endpoint to give OTEL_EXPORTER_OTLP_ENDPOINT.
func startReceiver(t *testing.T, protocol string) (*otlpReceiver, string) {
	t.Helper()
	r := &otlpReceiver{service: map[string]string{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	switch protocol {
	case "grpc":
		g := grpc.NewServer()
		collectortracev1.RegisterTraceServiceServer(g, r)
		go g.Serve(ln)
		t.Cleanup(g.Stop)
	case "http/protobuf":
		mux := http.NewServeMux()
		mux.Handle("POST /v1/traces", r)
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ln)
		t.Cleanup(func() { hs.Close() })
	default:
		t.Fatalf("protocol %q", protocol)
	}
	return r, "http://" + ln.Addr().String()
}

// named returns the received spans with this name.
func (r *otlpReceiver) named(name string) []*tracev1.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*tracev1.Span
	for _, sp := range r.spans {
		if sp.GetName() == name {
			out = append(out, sp)
		}
	}
	return out
}

// trace returns the received spans of a trace by span id.
func (r *otlpReceiver) trace(id []byte) map[string]*tracev1.Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]*tracev1.Span{}
	for _, sp := range r.spans {
		if bytes.Equal(sp.GetTraceId(), id) {
			out[hex.EncodeToString(sp.GetSpanId())] = sp
		}
	}
	return out
}

func spanAttr(sp *tracev1.Span, key string) string {
	for _, kv := range sp.GetAttributes() {
		if kv.GetKey() == key {
			if s := kv.GetValue().GetStringValue(); s != "" {
				return s
			}
			if kv.GetValue().GetIntValue() != 0 {
				return strings.TrimSpace(kv.GetValue().String())
			}
		}
	}
	return ""
}

// jsonLines parses the JSON log lines in b.
func jsonLines(b *syncBuffer) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// TestTracingSetDesiredState: with an OTLP endpoint set, one SetDesiredState
// makes one trace with the API call, the store write under it, and the
// Delta sent on the device's stream under the write; ferryd's JSON log
// lines of the call carry the trace's id.
func TestTracingSetDesiredState(t *testing.T) {
	for _, tc := range []struct {
		protocol string
		backend  ferrytest.Backend
	}{
		{"grpc", ferrytest.Embedded},
		{"http/protobuf", ferrytest.Redis},
	} {
		t.Run(tc.protocol+"/"+string(tc.backend), func(t *testing.T) {
			recv, f, logs := startTraced(t, tc.protocol, tc.backend)
			ctx := context.Background()

			// A health check first: probes are not traced.
			hc, err := f.HTTPClient(t).Post(f.APIURL()+"/grpc.health.v1.Health/Check", "application/json", strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			hc.Body.Close()
			if hc.StatusCode != http.StatusOK {
				t.Fatalf("health check: %s", hc.Status)
			}

			dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{AgentVersion: "ferry-agent/test"})
			resp, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
				DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Config: map[string]string{"mode": "traced"}},
			}))
			if err != nil {
				t.Fatal(err)
			}
			version := resp.Msg.GetDevice().GetDesired().GetVersion()
			if got := dev.Recv().GetDelta().GetDesiredVersion(); got != version {
				t.Fatalf("delta for version %d, want %d", got, version)
			}

			// Spans reach the receiver in batches; wait for the Delta's.
			const (
				apiName   = "ferry.fleet.v1.FleetService/SetDesiredState"
				storeName = "store.SetDesired"
				deltaName = "ferry.device.v1.DeviceService/Sync send delta"
			)
			recv.wait(t, deltaName, func(*tracev1.Span) bool { return true })
			apis := recv.wait(t, apiName, func(*tracev1.Span) bool { return true })
			if len(apis) != 1 {
				t.Fatalf("%d %q spans, want 1", len(apis), apiName)
			}
			api := apis[0]
			if api.GetKind() != tracev1.Span_SPAN_KIND_SERVER || len(api.GetParentSpanId()) != 0 {
				t.Errorf("API span: kind %v, parent %x; want a server span at the trace's root", api.GetKind(), api.GetParentSpanId())
			}
			spans := recv.trace(api.GetTraceId())
			under := func(sp, ancestor *tracev1.Span) bool { return under(spans, sp, ancestor) }
			var write, delta *tracev1.Span
			for _, sp := range spans {
				switch sp.GetName() {
				case storeName:
					write = sp
				case deltaName:
					delta = sp
				}
			}
			if write == nil {
				t.Fatalf("the API call's trace has no %q span: %v", storeName, names(spans))
			}
			if !under(write, api) || spanAttr(write, "ferry.device.id") != "dev-1" || spanAttr(write, "db.system.name") == "" {
				t.Errorf("store write span %v: want it under the API call, for dev-1, with the backend named", write)
			}
			if delta == nil {
				t.Fatalf("the API call's trace has no %q span: %v (the Delta went to another trace)", deltaName, names(spans))
			}
			if !bytes.Equal(delta.GetParentSpanId(), write.GetSpanId()) || delta.GetKind() != tracev1.Span_SPAN_KIND_PRODUCER {
				t.Errorf("delta span: parent %x kind %v; want the store write %x, producer", delta.GetParentSpanId(), delta.GetKind(), write.GetSpanId())
			}
			if spanAttr(delta, "ferry.job.id") != resp.Msg.GetDevice().GetDesired().GetJobId() {
				t.Errorf("delta span names job %q, want %q", spanAttr(delta, "ferry.job.id"), resp.Msg.GetDevice().GetDesired().GetJobId())
			}
			if svc := recv.service[hex.EncodeToString(api.GetSpanId())]; svc != "ferryd-traced" {
				t.Errorf("service.name %q, want OTEL_SERVICE_NAME's", svc)
			}
			// The stream's own messages are traced too: the Hello.
			if len(recv.named("ferry.device.v1.DeviceService/Sync receive hello")) == 0 {
				t.Error("no span for the Hello received")
			}

			// Spans are exported in the order they end: the health check's
			// would be in by now.
			if hc := recv.named("grpc.health.v1.Health/Check"); len(hc) != 0 {
				t.Errorf("health check traced: %v", hc)
			}

			traceID := hex.EncodeToString(api.GetTraceId())
			found := map[string]bool{}
			for _, line := range jsonLines(logs) {
				if line["trace_id"] == traceID {
					found[line["msg"].(string)] = true
					if sid, _ := line["span_id"].(string); len(sid) != 16 {
						t.Errorf("log line %v: span_id %q", line, sid)
					}
				}
			}
			for _, msg := range []string{"desired state set", "delta sent"} {
				if !found[msg] {
					t.Errorf("no %q log line with trace_id %s; lines with it: %v", msg, traceID, found)
				}
			}
		})
	}
}

// startTraced starts an OTLP receiver and a ferryd that exports its
// traces there with protocol and logs JSON into the returned buffer.
func startTraced(t *testing.T, protocol string, backend ferrytest.Backend) (*otlpReceiver, *ferrytest.Ferryd, *syncBuffer) {
	t.Helper()
	recv, endpoint := startReceiver(t, protocol)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
	t.Setenv("OTEL_SERVICE_NAME", "ferryd-traced")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50") // milliseconds
	logs := &syncBuffer{}
	f := ferrytest.StartWithLog(t, backend, nil,
		slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	return recv, f, logs
}

// wait returns the spans named name that match, once there is one: spans
// reach the receiver in batches.
func (r *otlpReceiver) wait(t *testing.T, name string, match func(*tracev1.Span) bool) []*tracev1.Span {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var out []*tracev1.Span
		for _, sp := range r.named(name) {
			if match(sp) {
				out = append(out, sp)
			}
		}
		if len(out) > 0 {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q span exported", name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// under walks up the trace from sp; it reports whether ancestor is met.
func under(spans map[string]*tracev1.Span, sp, ancestor *tracev1.Span) bool {
	for p := sp; p != nil && len(p.GetParentSpanId()) > 0; {
		if bytes.Equal(p.GetParentSpanId(), ancestor.GetSpanId()) {
			return true
		}
		p = spans[hex.EncodeToString(p.GetParentSpanId())]
	}
	return false
}

// TestTracingRolloutAndReport: a TUF download is a server span; a rollout
// tick that gives a device its job
// is one trace from the tick to the Delta; a device's report is one trace
// from its receipt, through the store write, to the Accepted sent back.
func TestTracingRolloutAndReport(t *testing.T) {
	recv, f, _ := startTraced(t, "grpc", ferrytest.Embedded)
	ctx := context.Background()
	f.Publish(t, testBundle.GetTargetPath())
	// TUF downloads are traced as HTTP requests.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.APIURL()+"/tuf/metadata/timestamp.json", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+f.OperatorToken(t))
	got, err := f.HTTPClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got.Body.Close()
	if got.StatusCode != http.StatusOK {
		t.Fatalf("timestamp.json: %s", got.Status)
	}
	if sp := recv.wait(t, "GET /tuf/metadata/", func(*tracev1.Span) bool { return true })[0]; sp.GetKind() != tracev1.Span_SPAN_KIND_SERVER {
		t.Errorf("TUF download span kind %v, want server", sp.GetKind())
	}

	dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{AgentVersion: "ferry-agent/test"})
	rollouts := fleetv1connect.NewRolloutServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
	if _, err := rollouts.CreateRollout(ctx, connect.NewRequest(&fleetv1.CreateRolloutRequest{Bundle: testBundle, Selector: "group=dev"})); err != nil {
		t.Fatal(err)
	}
	delta := dev.Recv().GetDelta()
	if delta.GetJobId() == "" {
		t.Fatal("no job from the rollout")
	}

	sent := recv.wait(t, "ferry.device.v1.DeviceService/Sync send delta", func(sp *tracev1.Span) bool {
		return spanAttr(sp, "ferry.job.id") == delta.GetJobId()
	})[0]
	ticks := recv.wait(t, "rollout.tick", func(sp *tracev1.Span) bool { return bytes.Equal(sp.GetTraceId(), sent.GetTraceId()) })
	spans := recv.trace(sent.GetTraceId())
	if !under(spans, sent, ticks[0]) {
		t.Errorf("the rollout's Delta is not under the tick that gave the job: %v", names(spans))
	}
	// The tick writes every device's desired document; the Delta's parent
	// is dev-1's write.
	write := spans[hex.EncodeToString(sent.GetParentSpanId())]
	if write.GetName() != "store.SetDesired" || spanAttr(write, "ferry.device.id") != "dev-1" || !under(spans, write, ticks[0]) {
		t.Errorf("the tick's trace has no store write between the tick and the Delta: %v", names(spans))
	}

	dev.SendReport(&devicev1.Report{
		JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: &devicev1.ReportedState{Bundle: delta.GetDesired().GetBundle()},
	})
	if a := dev.Recv().GetAccepted(); a.GetJobId() != delta.GetJobId() {
		t.Fatalf("answer to the report: %v, want Accepted", a)
	}
	accepted := recv.wait(t, "ferry.device.v1.DeviceService/Sync send accepted", func(*tracev1.Span) bool { return true })[0]
	spans = recv.trace(accepted.GetTraceId())
	var report, reported *tracev1.Span
	for _, sp := range spans {
		switch sp.GetName() {
		case "ferry.device.v1.DeviceService/Sync receive report":
			report = sp
		case "store.SetReported":
			reported = sp
		}
	}
	switch {
	case report == nil || report.GetKind() != tracev1.Span_SPAN_KIND_CONSUMER:
		t.Errorf("the Accepted's trace has no consumer span for the report: %v", names(spans))
	case !bytes.Equal(accepted.GetParentSpanId(), report.GetSpanId()):
		t.Errorf("the Accepted is not a child of the report's span")
	case reported == nil || !under(spans, reported, report):
		t.Errorf("the report's trace has no store write under it: %v", names(spans))
	}
}

func names(spans map[string]*tracev1.Span) []string {
	var out []string
	for _, sp := range spans {
		out = append(out, sp.GetName())
	}
	return out
}
