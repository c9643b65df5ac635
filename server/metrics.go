package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"

	"github.com/ferryhq/ferry/rollout"
)

// metrics are ferryd's Prometheus metrics, on a registry of its own. The
// list, with labels, is in docs/operations.md.
type metrics struct {
	registry *prometheus.Registry
	// grpc is the device port's per-RPC series (go-grpc-middleware).
	grpc *grpcprom.ServerMetrics
	// api is the API port's per-RPC series (metrics_connect.go).
	api *connectMetrics

	streams       prometheus.Gauge
	streamsOpened prometheus.Counter
	streamsClosed *prometheus.CounterVec
	received      *prometheus.CounterVec
	reports       *prometheus.CounterVec
	deltas        prometheus.Counter

	downloads       *prometheus.CounterVec
	downloadBytes   *prometheus.CounterVec
	downloadRefused *prometheus.CounterVec
	downloadRanges  prometheus.Counter

	enrollments *prometheus.CounterVec
	renewals    *prometheus.CounterVec

	rolloutAborts    prometheus.Counter
	rolloutRollbacks prometheus.Counter

	store *prometheus.HistogramVec
}

// latencyBuckets suit calls that take from a fraction of a millisecond
// (embedded store, cached answers) to seconds (store outages, big writes).
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		grpc: grpcprom.NewServerMetrics(
			grpcprom.WithServerCounterOptions(grpcprom.WithNamespace("ferry")),
			grpcprom.WithServerHandlingTimeHistogram(
				grpcprom.WithHistogramNamespace("ferry"), grpcprom.WithHistogramBuckets(latencyBuckets)),
		),
		api: newConnectMetrics(),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_device_streams", Help: "Open device streams on this instance.",
		}),
		streamsOpened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_device_streams_opened_total", Help: "Device streams opened (after Hello).",
		}),
		streamsClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_device_streams_closed_total", Help: "Device streams closed, by reason.",
		}, []string{"reason"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_device_messages_received_total", Help: "Messages received from devices, by type.",
		}, []string{"type"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_device_reports_total", Help: "Device reports, by outcome (accepted, rejected) and reject code.",
		}, []string{"outcome", "code"}),
		deltas: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_deltas_sent_total", Help: "Desired-state deltas sent to devices.",
		}),
		downloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_downloads_total", Help: "Repository downloads served, by kind (metadata, target).",
		}, []string{"kind"}),
		downloadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_download_bytes_total", Help: "Bytes of repository downloads sent, by kind.",
		}, []string{"kind"}),
		downloadRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_downloads_refused_total", Help: "Repository downloads refused, by kind and reason.",
		}, []string{"kind", "reason"}),
		downloadRanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_download_ranges_total", Help: "Target downloads answered with a byte range (resumed downloads).",
		}),
		enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_enrollments_total", Help: "Device enrollments, by method (token, factory) and outcome.",
		}, []string{"method", "outcome"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_certificate_renewals_total", Help: "Device certificate renewals, by outcome.",
		}, []string{"outcome"}),
		rolloutAborts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_rollout_aborts_total", Help: "Rollouts stopped by an abort rule, by this instance's controller.",
		}),
		rolloutRollbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_rollout_rollbacks_total", Help: "Devices given a rollout's rollback bundle by this instance's controller.",
		}),
		store: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_store_operation_duration_seconds", Help: "Store calls' latency, by operation and outcome.",
			Buckets: latencyBuckets,
		}, []string{"operation", "outcome"}),
	}
	m.registry.MustRegister(m.grpc, m.api, m.streams, m.streamsOpened, m.streamsClosed, m.received, m.reports, m.deltas,
		m.downloads, m.downloadBytes, m.downloadRefused, m.downloadRanges, m.enrollments, m.renewals, m.rolloutAborts, m.rolloutRollbacks, m.store,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// rolloutEvent counts what the rollout controller reports.
func (m *metrics) rolloutEvent(event string) {
	switch event {
	case rollout.EventAborted:
		m.rolloutAborts.Inc()
	case rollout.EventRolledBack:
		m.rolloutRollbacks.Inc()
	}
}

// outcome is the outcome label of err: "ok" or "error".
func outcome(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
