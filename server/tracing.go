package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/otelconnect"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// tracerName is the instrumentation scope of ferryd's own spans.
const tracerName = "github.com/ferryhq/ferry/server"

// tracing is ferryd's OpenTelemetry tracing. It is configured only by the
// standard environment variables (OTEL_EXPORTER_OTLP_*, OTEL_SERVICE_NAME,
// OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*) and is off
// unless an OTLP endpoint is set: then the provider is a no-op, nothing is
// wrapped and no span is made.
type tracing struct {
	enabled  bool
	provider trace.TracerProvider
	tracer   trace.Tracer
	// shutdown flushes and stops the exporter.
	shutdown func(context.Context) error
}

// propagator carries trace context in W3C traceparent form: in API calls'
// headers and in stored desired documents.
var propagator = propagation.TraceContext{}

// tracingOff is the no-op tracing.
func tracingOff() *tracing {
	p := noop.NewTracerProvider()
	return &tracing{provider: p, tracer: p.Tracer(tracerName), shutdown: func(context.Context) error { return nil }}
}

// newTracing reads the OpenTelemetry environment variables. Tracing is on
// when OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is
// set (and neither OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none
// says otherwise); the protocol is OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
// OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf" (the default) or "grpc".
func newTracing(ctx context.Context, log *slog.Logger) (*tracing, error) {
	if !tracingWanted() {
		return tracingOff(), nil
	}
	protocol := firstEnv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
	var exp sdktrace.SpanExporter
	var err error
	switch protocol {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: ferryd exports traces with http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	// ferryd names the service unless OTEL_SERVICE_NAME or
	// OTEL_RESOURCE_ATTRIBUTES does: later options win.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "ferryd")),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	// The sampler comes from OTEL_TRACES_SAMPLER (parent-based, always on,
	// by default) and batching from OTEL_BSP_*.
	p := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	// Export failures (a collector away) go to ferryd's log, not stderr.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing", "err", err)
	}))
	return &tracing{enabled: true, provider: p, tracer: p.Tracer(tracerName), shutdown: p.Shutdown}, nil
}

func tracingWanted() bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") || os.Getenv("OTEL_TRACES_EXPORTER") == "none" {
		return false
	}
	return firstEnv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT") != ""
}

func firstEnv(names ...string) string {
	for _, n := range names {
		if v := strings.TrimSpace(os.Getenv(n)); v != "" {
			return v
		}
	}
	return ""
}

// interceptors returns the Connect handler options that trace API calls
// (none when tracing is off). Metrics are not taken here.
func (t *tracing) interceptors() []connect.HandlerOption {
	if !t.enabled {
		return nil
	}
	ic, err := otelconnect.NewInterceptor(
		otelconnect.WithTracerProvider(t.provider),
		otelconnect.WithPropagator(propagator),
		otelconnect.WithoutMetrics(),
		// Operators' clients may send their own trace context.
		otelconnect.WithTrustRemote(),
		// Health checks come every few seconds from every probe.
		otelconnect.WithFilter(func(_ context.Context, spec connect.Spec) bool {
			return !strings.HasPrefix(spec.Procedure, "/"+grpchealth.HealthV1ServiceName+"/")
		}),
	)
	if err != nil { // only from the meter, which is not used
		panic(fmt.Sprintf("otelconnect: %v", err))
	}
	return []connect.HandlerOption{connect.WithInterceptors(ic)}
}

// httpHandler returns h with a server span per request (h itself when
// tracing is off): the TUF metadata and target downloads, which are plain
// HTTP beside the Connect handlers.
func (t *tracing) httpHandler(h http.Handler) http.Handler {
	if !t.enabled {
		return h
	}
	return otelhttp.NewHandler(h, "tuf",
		otelhttp.WithTracerProvider(t.provider),
		otelhttp.WithPropagators(propagator),
		otelhttp.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string {
			for _, p := range []string{tufMetadataPath, tufTargetsPath} {
				if strings.HasPrefix(r.URL.Path, p) {
					return r.Method + " " + p
				}
			}
			return r.Method + " /tuf/"
		}),
	)
}

// logger returns log with trace ids added to records logged with a traced
// context (unchanged when tracing is off).
func (t *tracing) logger(log *slog.Logger) *slog.Logger {
	if !t.enabled {
		return log
	}
	return slog.New(traceLogHandler{log.Handler()})
}

// traceParent returns the W3C traceparent of ctx's span, or "" when ctx
// has no sampled span.
func traceParent(ctx context.Context) string {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsSampled() {
		return ""
	}
	c := propagation.MapCarrier{}
	propagator.Inject(ctx, c)
	return c["traceparent"]
}

// withTraceParent returns ctx with the remote span context of a stored
// traceparent as its parent; ctx unchanged when tp is empty or malformed.
func withTraceParent(ctx context.Context, tp string) context.Context {
	if tp == "" {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier{"traceparent": tp})
}

// endSpan records err on span, if any, and ends it (a nil span: nothing).
func endSpan(span trace.Span, err error) {
	if span == nil {
		return
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// traceLogHandler adds trace_id and span_id to the records logged with a
// context that carries a span. (Under a WithGroup they would land in the
// group; ferryd's loggers use none.)
type traceLogHandler struct{ slog.Handler }

func (h traceLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceLogHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceLogHandler) WithGroup(name string) slog.Handler {
	return traceLogHandler{h.Handler.WithGroup(name)}
}

// tickTracer traces the rollout controller's ticks (rollout.TickTracer).
type tickTracer struct{ tracer trace.Tracer }

func (t tickTracer) StartTick(ctx context.Context) (context.Context, func(error)) {
	ctx, span := t.tracer.Start(ctx, "rollout.tick", trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindInternal))
	return ctx, func(err error) { endSpan(span, err) }
}

// deviceTracer is the device stream's tracer: nil when tracing is off, so
// that the stream makes no span at all.
func (t *tracing) deviceTracer() trace.Tracer {
	if !t.enabled {
		return nil
	}
	return t.tracer
}
