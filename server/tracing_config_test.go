package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

// TestNewTracing: tracing is on only with an OTLP endpoint, honours the
// standard switches that turn it off, and refuses an unknown protocol.
func TestNewTracing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     map[string]string
		enabled bool
		err     string
	}{
		{name: "no endpoint", env: nil},
		{name: "endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, enabled: true},
		{name: "traces endpoint, grpc", env: map[string]string{
			"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
		}, enabled: true},
		{name: "sdk disabled", env: map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true",
		}},
		{name: "exporter none", env: map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none",
		}},
		{name: "unknown protocol", env: map[string]string{
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
		}, err: `OTEL_EXPORTER_OTLP_PROTOCOL "http/json"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{
				"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
				"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER",
			} {
				t.Setenv(k, tc.env[k])
			}
			// Nothing is sampled, so nothing is sent to the endpoints
			// (no collector listens there): the sampler is the standard
			// variable's.
			t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
			tr, err := newTracing(t.Context(), slog.New(slog.DiscardHandler))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tr.shutdown(context.Background())
			if tr.enabled != tc.enabled {
				t.Fatalf("enabled %v, want %v", tr.enabled, tc.enabled)
			}
			_, span := tr.tracer.Start(t.Context(), "probe")
			defer span.End()
			if span.SpanContext().IsValid() != tc.enabled || span.SpanContext().IsSampled() {
				t.Errorf("span context valid %v, sampled %v with tracing enabled %v and OTEL_TRACES_SAMPLER=always_off",
					span.SpanContext().IsValid(), span.SpanContext().IsSampled(), tc.enabled)
			}
			if !tc.enabled && (tr.deviceTracer() != nil || tr.interceptors() != nil) {
				t.Error("tracing off still instruments the device stream or the API")
			}
		})
	}
}

// TestTraceLogHandler: JSON log lines logged with a traced context carry
// its trace and span ids, others carry neither.
func TestTraceLogHandler(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:  trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}, TraceFlags: trace.FlagsSampled,
	})
	for _, tc := range []struct {
		name            string
		ctx             context.Context
		traceID, spanID string
	}{
		{"traced", trace.ContextWithSpanContext(context.Background(), sc), sc.TraceID().String(), sc.SpanID().String()},
		{"untraced", context.Background(), "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := (&tracing{enabled: true}).logger(slog.New(slog.NewJSONHandler(&buf, nil))).With("device", "dev-1")
			log.InfoContext(tc.ctx, "desired state set", "version", 2)
			var line map[string]any
			if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
				t.Fatal(err)
			}
			got, _ := line["trace_id"].(string)
			gotSpan, _ := line["span_id"].(string)
			if got != tc.traceID || gotSpan != tc.spanID || line["device"] != "dev-1" || line["version"] != 2.0 {
				t.Errorf("log line %v: want trace_id %q, span_id %q and the record's attributes", line, tc.traceID, tc.spanID)
			}
		})
	}
}

// TestTraceParentRoundTrip: a stored traceparent makes the next span a
// child in the same trace; an empty or malformed one changes nothing.
func TestTraceParentRoundTrip(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0xa, 1}, SpanID: trace.SpanID{0xb, 2}, TraceFlags: trace.FlagsSampled,
	})
	tp := traceParent(trace.ContextWithSpanContext(context.Background(), sc))
	if want := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"; tp != want {
		t.Fatalf("traceparent %q, want %q", tp, want)
	}
	for _, tc := range []struct {
		tp    string
		valid bool
	}{{tp, true}, {"", false}, {"00-zz-yy-01", false}} {
		got := trace.SpanContextFromContext(withTraceParent(context.Background(), tc.tp))
		if got.IsValid() != tc.valid || (tc.valid && (got.TraceID() != sc.TraceID() || got.SpanID() != sc.SpanID() || !got.IsRemote())) {
			t.Errorf("withTraceParent(%q): %v", tc.tp, got)
		}
	}
	if got := traceParent(context.Background()); got != "" {
		t.Errorf("traceparent of an untraced context: %q", got)
	}
}
