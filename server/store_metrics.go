package server

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferryhq/ferry/store"
)

// The store decorators below time every store call into
// ferry_store_operation_duration_seconds{operation, outcome}. They wrap the
// interfaces ferryd hands to its services; the backend itself is unchanged.

func timed[T any](h *prometheus.HistogramVec, op string, f func() (T, error)) (T, error) {
	start := time.Now()
	v, err := f()
	h.WithLabelValues(op, storeOutcome(err)).Observe(time.Since(start).Seconds())
	return v, err
}

// storeOutcome is the outcome label of a store call: "ok", an answer that
// is part of the store's contract ("not_found", "conflict", "refused": used,
// expired, fenced, held...), "unavailable", or "error".
func storeOutcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrNoAttestation):
		return "not_found"
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrExists):
		return "conflict"
	case errors.Is(err, store.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, store.ErrUsed), errors.Is(err, store.ErrExpired), errors.Is(err, store.ErrSuperseded),
		errors.Is(err, store.ErrEnrolled), errors.Is(err, store.ErrFenced), errors.Is(err, store.ErrLeaseHeld):
		return "refused"
	default:
		return "error"
	}
}

func timedErr(h *prometheus.HistogramVec, op string, f func() error) error {
	_, err := timed(h, op, func() (struct{}, error) { return struct{}{}, f() })
	return err
}

// timedDevices times store.Devices.
type timedDevices struct {
	store.Devices
	h *prometheus.HistogramVec
}

func (t timedDevices) CreateDevice(ctx context.Context, d store.Device) (store.Device, bool, error) {
	var created bool
	dev, err := timed(t.h, "CreateDevice", func() (store.Device, error) {
		var (
			dev store.Device
			err error
		)
		dev, created, err = t.Devices.CreateDevice(ctx, d)
		return dev, err
	})
	return dev, created, err
}

func (t timedDevices) GetDevice(ctx context.Context, id string) (store.Device, error) {
	return timed(t.h, "GetDevice", func() (store.Device, error) { return t.Devices.GetDevice(ctx, id) })
}

func (t timedDevices) ListDevices(ctx context.Context, opts store.ListOptions) ([]store.Device, error) {
	return timed(t.h, "ListDevices", func() ([]store.Device, error) { return t.Devices.ListDevices(ctx, opts) })
}

func (t timedDevices) SetDesired(ctx context.Context, id string, expect uint64, d store.Desired, w store.Write) (store.Device, error) {
	return timed(t.h, "SetDesired", func() (store.Device, error) { return t.Devices.SetDesired(ctx, id, expect, d, w) })
}

// SetDesiredBatch implements store.DesiredBatcher, timed as one call.
func (t timedDevices) SetDesiredBatch(ctx context.Context, writes []store.DesiredWrite) ([]store.DesiredResult, error) {
	return timed(t.h, "SetDesiredBatch", func() ([]store.DesiredResult, error) { return store.SetDesiredBatch(ctx, t.Devices, writes) })
}

func (t timedDevices) SetReported(ctx context.Context, id string, expect uint64, r store.Reported, w store.Write) (store.Device, error) {
	return timed(t.h, "SetReported", func() (store.Device, error) { return t.Devices.SetReported(ctx, id, expect, r, w) })
}

func (t timedDevices) ListEvents(ctx context.Context, id string, before uint64, limit int) ([]store.Event, error) {
	return timed(t.h, "ListEvents", func() ([]store.Event, error) { return t.Devices.ListEvents(ctx, id, before, limit) })
}

func (t timedDevices) GetAttestation(ctx context.Context, id, jobID string) (store.Attestation, error) {
	return timed(t.h, "GetAttestation", func() (store.Attestation, error) { return t.Devices.GetAttestation(ctx, id, jobID) })
}

func (t timedDevices) Summary(ctx context.Context, silentBefore time.Time) (store.Summary, error) {
	return timed(t.h, "Summary", func() (store.Summary, error) { return t.Devices.Summary(ctx, silentBefore) })
}

func (t timedDevices) MarkSeen(ctx context.Context, seen []store.Seen) error {
	return timedErr(t.h, "MarkSeen", func() error { return t.Devices.MarkSeen(ctx, seen) })
}

// timedRollouts times store.Rollouts and store.Leases.
type timedRollouts struct {
	ro     store.Rollouts
	leases store.Leases
	h      *prometheus.HistogramVec
}

func (t timedRollouts) CreateRollout(ctx context.Context, r store.Rollout) (store.Rollout, error) {
	return timed(t.h, "CreateRollout", func() (store.Rollout, error) { return t.ro.CreateRollout(ctx, r) })
}

func (t timedRollouts) GetRollout(ctx context.Context, id string) (store.Rollout, error) {
	return timed(t.h, "GetRollout", func() (store.Rollout, error) { return t.ro.GetRollout(ctx, id) })
}

func (t timedRollouts) ListRollouts(ctx context.Context, before string, limit int) ([]store.Rollout, error) {
	return timed(t.h, "ListRollouts", func() ([]store.Rollout, error) { return t.ro.ListRollouts(ctx, before, limit) })
}

func (t timedRollouts) UpdateRollout(ctx context.Context, expect uint64, r store.Rollout, fence uint64) (store.Rollout, error) {
	return timed(t.h, "UpdateRollout", func() (store.Rollout, error) { return t.ro.UpdateRollout(ctx, expect, r, fence) })
}

func (t timedRollouts) PutExecutions(ctx context.Context, rolloutID string, fence uint64, execs []store.Execution) error {
	return timedErr(t.h, "PutExecutions", func() error { return t.ro.PutExecutions(ctx, rolloutID, fence, execs) })
}

func (t timedRollouts) ListExecutions(ctx context.Context, rolloutID string) ([]store.Execution, error) {
	return timed(t.h, "ListExecutions", func() ([]store.Execution, error) { return t.ro.ListExecutions(ctx, rolloutID) })
}

func (t timedRollouts) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (uint64, error) {
	return timed(t.h, "AcquireLease", func() (uint64, error) { return t.leases.AcquireLease(ctx, name, holder, ttl) })
}

func (t timedRollouts) ReleaseLease(ctx context.Context, name, holder string) error {
	return timedErr(t.h, "ReleaseLease", func() error { return t.leases.ReleaseLease(ctx, name, holder) })
}

// timedCredentials times store.Credentials.
type timedCredentials struct {
	c store.Credentials
	h *prometheus.HistogramVec
}

func (t timedCredentials) PutEnrollment(ctx context.Context, e store.Enrollment, reenroll bool) error {
	return timedErr(t.h, "PutEnrollment", func() error { return t.c.PutEnrollment(ctx, e, reenroll) })
}

func (t timedCredentials) TakeEnrollment(ctx context.Context, tokenSHA256, claimant string, now time.Time) (store.Enrollment, error) {
	return timed(t.h, "TakeEnrollment", func() (store.Enrollment, error) { return t.c.TakeEnrollment(ctx, tokenSHA256, claimant, now) })
}

func (t timedCredentials) Revoke(ctx context.Context, r store.Revocation) (store.Revocation, error) {
	return timed(t.h, "Revoke", func() (store.Revocation, error) { return t.c.Revoke(ctx, r) })
}

func (t timedCredentials) GetRevocation(ctx context.Context, deviceID string) (store.Revocation, error) {
	return timed(t.h, "GetRevocation", func() (store.Revocation, error) { return t.c.GetRevocation(ctx, deviceID) })
}

func (t timedCredentials) ListRevocations(ctx context.Context) ([]store.Revocation, error) {
	return timed(t.h, "ListRevocations", func() ([]store.Revocation, error) { return t.c.ListRevocations(ctx) })
}

func (t timedCredentials) UseTokenID(ctx context.Context, id, claimant string, expires time.Time) error {
	return timedErr(t.h, "UseTokenID", func() error { return t.c.UseTokenID(ctx, id, claimant, expires) })
}

func (t timedCredentials) GetOrCreateSecret(ctx context.Context, name string, candidate []byte) ([]byte, error) {
	return timed(t.h, "GetOrCreateSecret", func() ([]byte, error) { return t.c.GetOrCreateSecret(ctx, name, candidate) })
}

func (t timedCredentials) SwapSecret(ctx context.Context, name string, prev, next []byte) error {
	return timedErr(t.h, "SwapSecret", func() error { return t.c.SwapSecret(ctx, name, prev, next) })
}

var (
	_ store.Devices     = timedDevices{}
	_ store.Rollouts    = timedRollouts{}
	_ store.Leases      = timedRollouts{}
	_ store.Credentials = timedCredentials{}
)
