package server

import (
	"context"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
)

// connectMetrics are the API port's per-RPC series: a Connect interceptor
// that counts calls by procedure and code and times them, named like the
// device port's (go-grpc-middleware) series so that one dashboard reads both.
type connectMetrics struct {
	started  *prometheus.CounterVec
	handled  *prometheus.CounterVec
	handling *prometheus.HistogramVec
}

func newConnectMetrics() *connectMetrics {
	return &connectMetrics{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_api_server_started_total", Help: "API calls started, by service and method.",
		}, []string{"rpc_type", "service", "method"}),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_api_server_handled_total", Help: "API calls completed, by service, method and Connect code.",
		}, []string{"rpc_type", "service", "method", "code"}),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_api_server_handling_seconds", Help: "API calls' latency until the handler returned, by service and method.",
			Buckets: latencyBuckets,
		}, []string{"rpc_type", "service", "method"}),
	}
}

func (m *connectMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.started.Describe(ch)
	m.handled.Describe(ch)
	m.handling.Describe(ch)
}

func (m *connectMetrics) Collect(ch chan<- prometheus.Metric) {
	m.started.Collect(ch)
	m.handled.Collect(ch)
	m.handling.Collect(ch)
}

// procedureLabels splits "/pkg.Service/Method".
func procedureLabels(procedure string) (service, method string) {
	service, method, _ = strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
	return service, method
}

func streamType(t connect.StreamType) string {
	switch t {
	case connect.StreamTypeClient:
		return "client_stream"
	case connect.StreamTypeServer:
		return "server_stream"
	case connect.StreamTypeBidi:
		return "bidi_stream"
	default:
		return "unary"
	}
}

// codeLabel is the Connect code of err, "ok" for nil.
func codeLabel(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

func (m *connectMetrics) observe(typ, procedure string, start time.Time, err error) {
	service, method := procedureLabels(procedure)
	m.handled.WithLabelValues(typ, service, method, codeLabel(err)).Inc()
	m.handling.WithLabelValues(typ, service, method).Observe(time.Since(start).Seconds())
}

func (m *connectMetrics) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		start := time.Now()
		service, method := procedureLabels(req.Spec().Procedure)
		m.started.WithLabelValues("unary", service, method).Inc()
		resp, err := next(ctx, req)
		m.observe("unary", req.Spec().Procedure, start, err)
		return resp, err
	}
}

func (m *connectMetrics) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (m *connectMetrics) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		typ := streamType(conn.Spec().StreamType)
		service, method := procedureLabels(conn.Spec().Procedure)
		m.started.WithLabelValues(typ, service, method).Inc()
		err := next(ctx, conn)
		m.observe(typ, conn.Spec().Procedure, start, err)
		return err
	}
}
