package server

import (
	"context"
	"slices"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/ferryhq/ferry/store"
)

// storeSpans starts the spans of store operations. A span is made only
// inside a trace (an API call, a device message, a rollout tick): the
// background work that reads the store on its own (resyncs, last-seen
// flushes) makes no trace of its own.
type storeSpans struct {
	tracer trace.Tracer
	system string // "bolt" or "redis"
}

func (s storeSpans) start(ctx context.Context, op string, attrs ...attribute.KeyValue) (context.Context, trace.Span, bool) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, nil, false
	}
	attrs = append(attrs, attribute.String("db.system.name", s.system), attribute.String("db.operation.name", op))
	ctx, span := s.tracer.Start(ctx, "store."+op, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx, span, true
}

func deviceAttr(id string) attribute.KeyValue { return attribute.String("ferry.device.id", id) }

func rolloutAttr(id string) attribute.KeyValue { return attribute.String("ferry.rollout.id", id) }

// tracedDevices is store.Devices with a span per operation. SetDesired
// also stores the traceparent of its span with the desired document, so
// that the device stream's Delta joins the trace that set it.
type tracedDevices struct {
	store.Devices
	spans storeSpans
}

func (t tracedDevices) CreateDevice(ctx context.Context, d store.Device) (store.Device, bool, error) {
	ctx, span, ok := t.spans.start(ctx, "CreateDevice", deviceAttr(d.ID))
	stored, created, err := t.Devices.CreateDevice(ctx, d)
	if ok {
		endSpan(span, err)
	}
	return stored, created, err
}

func (t tracedDevices) GetDevice(ctx context.Context, id string) (store.Device, error) {
	ctx, span, ok := t.spans.start(ctx, "GetDevice", deviceAttr(id))
	d, err := t.Devices.GetDevice(ctx, id)
	if ok {
		endSpan(span, err)
	}
	return d, err
}

func (t tracedDevices) ListDevices(ctx context.Context, opts store.ListOptions) ([]store.Device, error) {
	ctx, span, ok := t.spans.start(ctx, "ListDevices", attribute.Int("ferry.limit", opts.Limit))
	ds, err := t.Devices.ListDevices(ctx, opts)
	if ok {
		span.SetAttributes(attribute.Int("ferry.devices", len(ds)))
		endSpan(span, err)
	}
	return ds, err
}

// SetDesiredBatch implements store.DesiredBatcher in one span, whose
// traceparent every document of the batch carries.
func (t tracedDevices) SetDesiredBatch(ctx context.Context, writes []store.DesiredWrite) ([]store.DesiredResult, error) {
	ctx, span, ok := t.spans.start(ctx, "SetDesiredBatch", attribute.Int("ferry.devices", len(writes)))
	if ok {
		tp := traceParent(ctx)
		writes = slices.Clone(writes)
		for i := range writes {
			writes[i].Desired.TraceParent = tp
		}
	}
	out, err := store.SetDesiredBatch(ctx, t.Devices, writes)
	if ok {
		endSpan(span, err)
	}
	return out, err
}

func (t tracedDevices) SetDesired(ctx context.Context, id string, expect uint64, d store.Desired, w store.Write) (store.Device, error) {
	ctx, span, ok := t.spans.start(ctx, "SetDesired", deviceAttr(id), attribute.Int64("ferry.desired.version", int64(d.Version)))
	if ok {
		d.TraceParent = traceParent(ctx)
	}
	dev, err := t.Devices.SetDesired(ctx, id, expect, d, w)
	if ok {
		endSpan(span, err)
	}
	return dev, err
}

func (t tracedDevices) SetReported(ctx context.Context, id string, expect uint64, r store.Reported, w store.Write) (store.Device, error) {
	ctx, span, ok := t.spans.start(ctx, "SetReported", deviceAttr(id), attribute.Int64("ferry.reported.version", int64(r.Version)))
	dev, err := t.Devices.SetReported(ctx, id, expect, r, w)
	if ok {
		endSpan(span, err)
	}
	return dev, err
}

func (t tracedDevices) ListEvents(ctx context.Context, id string, before uint64, limit int) ([]store.Event, error) {
	ctx, span, ok := t.spans.start(ctx, "ListEvents", deviceAttr(id))
	evs, err := t.Devices.ListEvents(ctx, id, before, limit)
	if ok {
		endSpan(span, err)
	}
	return evs, err
}

func (t tracedDevices) GetAttestation(ctx context.Context, id, jobID string) (store.Attestation, error) {
	ctx, span, ok := t.spans.start(ctx, "GetAttestation", deviceAttr(id), attribute.String("ferry.job.id", jobID))
	a, err := t.Devices.GetAttestation(ctx, id, jobID)
	if ok {
		endSpan(span, err)
	}
	return a, err
}

func (t tracedDevices) Summary(ctx context.Context, silentBefore time.Time) (store.Summary, error) {
	ctx, span, ok := t.spans.start(ctx, "Summary")
	sum, err := t.Devices.Summary(ctx, silentBefore)
	if ok {
		endSpan(span, err)
	}
	return sum, err
}

func (t tracedDevices) MarkSeen(ctx context.Context, seen []store.Seen) error {
	ctx, span, ok := t.spans.start(ctx, "MarkSeen", attribute.Int("ferry.devices", len(seen)))
	err := t.Devices.MarkSeen(ctx, seen)
	if ok {
		endSpan(span, err)
	}
	return err
}

// tracedRollouts is store.Rollouts with a span per operation.
type tracedRollouts struct {
	store.Rollouts
	spans storeSpans
}

func (t tracedRollouts) CreateRollout(ctx context.Context, r store.Rollout) (store.Rollout, error) {
	ctx, span, ok := t.spans.start(ctx, "CreateRollout", rolloutAttr(r.ID))
	out, err := t.Rollouts.CreateRollout(ctx, r)
	if ok {
		endSpan(span, err)
	}
	return out, err
}

func (t tracedRollouts) GetRollout(ctx context.Context, id string) (store.Rollout, error) {
	ctx, span, ok := t.spans.start(ctx, "GetRollout", rolloutAttr(id))
	out, err := t.Rollouts.GetRollout(ctx, id)
	if ok {
		endSpan(span, err)
	}
	return out, err
}

func (t tracedRollouts) ListRollouts(ctx context.Context, before string, limit int) ([]store.Rollout, error) {
	ctx, span, ok := t.spans.start(ctx, "ListRollouts", attribute.Int("ferry.limit", limit))
	out, err := t.Rollouts.ListRollouts(ctx, before, limit)
	if ok {
		endSpan(span, err)
	}
	return out, err
}

func (t tracedRollouts) UpdateRollout(ctx context.Context, expect uint64, r store.Rollout, fence uint64) (store.Rollout, error) {
	ctx, span, ok := t.spans.start(ctx, "UpdateRollout", rolloutAttr(r.ID))
	out, err := t.Rollouts.UpdateRollout(ctx, expect, r, fence)
	if ok {
		endSpan(span, err)
	}
	return out, err
}

func (t tracedRollouts) PutExecutions(ctx context.Context, rolloutID string, fence uint64, execs []store.Execution) error {
	ctx, span, ok := t.spans.start(ctx, "PutExecutions", rolloutAttr(rolloutID), attribute.Int("ferry.executions", len(execs)))
	err := t.Rollouts.PutExecutions(ctx, rolloutID, fence, execs)
	if ok {
		endSpan(span, err)
	}
	return err
}

func (t tracedRollouts) ListExecutions(ctx context.Context, rolloutID string) ([]store.Execution, error) {
	ctx, span, ok := t.spans.start(ctx, "ListExecutions", rolloutAttr(rolloutID))
	out, err := t.Rollouts.ListExecutions(ctx, rolloutID)
	if ok {
		endSpan(span, err)
	}
	return out, err
}

// storeSpansFor returns the span maker for the configured backend.
func (t *tracing) storeSpans(cfg Config) storeSpans {
	system := "bolt"
	if cfg.RedisURL != "" {
		system = "redis"
	}
	return storeSpans{tracer: t.tracer, system: system}
}

// devices returns d traced, or d itself when tracing is off.
func (t *tracing) devices(cfg Config, d store.Devices) store.Devices {
	if !t.enabled {
		return d
	}
	return tracedDevices{Devices: d, spans: t.storeSpans(cfg)}
}

// rollouts returns r traced, or r itself when tracing is off.
func (t *tracing) rollouts(cfg Config, r store.Rollouts) store.Rollouts {
	if !t.enabled {
		return r
	}
	return tracedRollouts{Rollouts: r, spans: t.storeSpans(cfg)}
}
