package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are ferryd's Prometheus metrics, on a registry of its own.
type metrics struct {
	registry *prometheus.Registry
	streams  prometheus.Gauge
	received *prometheus.CounterVec
	reports  *prometheus.CounterVec
	deltas   prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_device_streams", Help: "Open device streams on this instance.",
		}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_device_messages_received_total", Help: "Messages received from devices, by type.",
		}, []string{"type"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_device_reports_total", Help: "Device reports, by outcome (accepted, rejected).",
		}, []string{"outcome"}),
		deltas: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ferry_deltas_sent_total", Help: "Desired-state deltas sent to devices.",
		}),
	}
	m.registry.MustRegister(m.streams, m.received, m.reports, m.deltas,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
