package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/ferryhq/ferry/inventory"
)

// ErrExists: a rollout with that id already exists.
var ErrExists = errors.New("already exists")

// ErrFenced: a write carried a fencing token that is no longer the lease's
// current one (another controller took over, or the lease lapsed).
var ErrFenced = errors.New("fencing token is stale")

// ErrLeaseHeld: another holder has the lease.
var ErrLeaseHeld = errors.New("lease held by another instance")

// Rollout is the stored document of a staged campaign: what was asked
// (Spec) and where it stands. The controller writes it under its lease;
// operators change State (pause, resume, cancel) with compare-and-set.
type Rollout struct {
	ID string `json:"id"`
	// Version grows by one on every write; CreateRollout stores version 1.
	Version uint64      `json:"version"`
	Spec    RolloutSpec `json:"spec"`
	// State is one of the rollout package's states ("RUNNING", "PAUSED"…).
	State string `json:"state"`
	// Reason says why the rollout is in its state (an abort's rule, who
	// paused it).
	Reason    string    `json:"reason,omitempty"`
	CreatedBy string    `json:"created_by,omitempty"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	StartedAt time.Time `json:"started_at,omitzero"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
	// Waves is the progress of each wave, filled when the rollout starts.
	Waves []WaveProgress `json:"waves,omitempty"`
	// Wave is the index of the wave being run.
	Wave int `json:"wave"`
	// Rate is the current pace, in devices per minute, of a rate strategy.
	Rate float64 `json:"rate,omitempty"`
	// Counts counts the executions by status.
	Counts map[string]uint64 `json:"counts,omitempty"`
	// Incompatible counts the devices of the target set left out because
	// the bundle's hardware list does not name their hardware.
	Incompatible uint64 `json:"incompatible,omitempty"`
	// Rollback asks the controller to give the rollback bundle to the
	// devices already moved, as it ends the rollout.
	Rollback bool `json:"rollback,omitempty"`
}

// RolloutSpec is what an operator asks of a rollout. It does not change
// after creation.
type RolloutSpec struct {
	Name   string `json:"name,omitempty"`
	Bundle Bundle `json:"bundle"`
	// Selector selects the target devices (over labels and attributes, see
	// Query.Selector), written as Kubernetes label selectors are; Devices
	// names them. One of the two is set. Labels is the selector of
	// rollouts stored before selectors had set-based terms (every label
	// must match).
	Selector string            `json:"selector,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	Devices  []string          `json:"devices,omitempty"`
	// Hardware is the bundle's signed hardware list, as the repository
	// held it when the rollout was created (empty: any hardware). Devices
	// whose hardware attribute it does not name are left out as
	// incompatible.
	Hardware []string `json:"hardware,omitempty"`
	// Waves, in order: each a share of the target set (Percent) or a
	// number of devices (Count). Without waves and without Rate, the
	// rollout is one wave of every device.
	Waves []WaveSpec `json:"waves,omitempty"`
	// Rate, instead of waves, paces the rollout exponentially.
	Rate *RateSpec `json:"rate,omitempty"`
	// MaxInFlight bounds the devices working on the job at once (0: no
	// bound).
	MaxInFlight uint64 `json:"max_in_flight,omitempty"`
	// DeviceTimeout ends an execution as TIMED_OUT if the device has not
	// finished in time (0: no timeout).
	DeviceTimeout time.Duration `json:"device_timeout,omitempty"`
	// Retries is how many more times a device that FAILED or TIMED_OUT is
	// given the job.
	Retries uint32 `json:"retries,omitempty"`
	// Soak is how long a wave's devices must stay healthy after they
	// succeeded before the next wave starts.
	Soak time.Duration `json:"soak,omitempty"`
	// Abort lists the thresholds that stop the rollout.
	Abort []AbortRule `json:"abort,omitempty"`
	// RollbackBundle, if set, is given to the devices already moved when
	// the rollout aborts.
	RollbackBundle Bundle `json:"rollback_bundle,omitzero"`
	// StartAt delays the start (zero: at once).
	StartAt time.Time `json:"start_at,omitzero"`
	// Window, if set, limits when devices are given the job.
	Window *Window `json:"window,omitempty"`
	// Continuous rollouts keep running after the last wave: a device that
	// matches the target set later is given the bundle too.
	Continuous bool `json:"continuous,omitempty"`
	// Consent, if set, is given to the devices with the job: each asks
	// for consent before it installs and/or reboots.
	Consent *ConsentPolicy `json:"consent,omitempty"`
}

// WaveSpec sizes a wave: Percent of the target set, or Count devices.
type WaveSpec struct {
	Percent float64 `json:"percent,omitempty"`
	Count   uint64  `json:"count,omitempty"`
}

// RateSpec paces a rollout: PerMinute devices a minute at first, multiplied
// by Factor after every RaiseAfter successes.
type RateSpec struct {
	PerMinute  float64 `json:"per_minute"`
	Factor     float64 `json:"factor,omitempty"`
	RaiseAfter uint64  `json:"raise_after,omitempty"`
}

// AbortRule stops a rollout when executions that ended with Status make up
// at least Percent of the executions that ended, once at least
// MinExecutions have ended.
type AbortRule struct {
	Status        string  `json:"status"`
	Percent       float64 `json:"percent"`
	MinExecutions uint64  `json:"min_executions,omitempty"`
}

// Window is a daily maintenance window: devices are given the job only
// from Start ("15:04", in Location) for Duration, on Days (every day when
// empty).
type Window struct {
	Start    string         `json:"start"`
	Duration time.Duration  `json:"duration"`
	Days     []time.Weekday `json:"days,omitempty"`
	Location string         `json:"location,omitempty"`
}

// WaveProgress is where a wave stands.
type WaveProgress struct {
	// Size is how many devices the wave holds.
	Size uint64 `json:"size"`
	// State is "PENDING", "RUNNING", "SOAKING" or "DONE".
	State     string            `json:"state"`
	StartedAt time.Time         `json:"started_at,omitzero"`
	SoakUntil time.Time         `json:"soak_until,omitzero"`
	EndedAt   time.Time         `json:"ended_at,omitzero"`
	Counts    map[string]uint64 `json:"counts,omitempty"`
	// Incompatible counts the devices left out as incompatible when the
	// wave started (the first wave: the target set at the start) or while
	// it ran (devices a continuous rollout found later).
	Incompatible uint64 `json:"incompatible,omitempty"`
}

// HasTargetSelector reports whether the spec selects its devices rather
// than naming them.
func (s RolloutSpec) HasTargetSelector() bool { return s.Selector != "" || len(s.Labels) > 0 }

// SelectorString is the spec's selector as written ("" for named devices).
func (s RolloutSpec) SelectorString() string {
	if s.Selector != "" || len(s.Labels) == 0 {
		return s.Selector
	}
	return labels.SelectorFromSet(s.Labels).String()
}

// TargetQuery is the query of the spec's target set, when it selects
// devices.
func (s RolloutSpec) TargetQuery() (Query, error) {
	q := Query{Labels: s.Labels}
	if s.Selector != "" {
		sel, err := labels.Parse(s.Selector)
		if err != nil {
			return Query{}, fmt.Errorf("rollout selector %q: %w", s.Selector, err)
		}
		q.Selector = sel
	}
	return q, nil
}

// Compatible reports whether a device may be given the spec's bundle by
// its hardware attribute: yes when the bundle names no hardware, or the
// device reports none (it still refuses a bundle it cannot run), or the
// list names the device's hardware.
func (s RolloutSpec) Compatible(d Device) bool {
	hw, ok := d.Attributes[inventory.Hardware]
	return len(s.Hardware) == 0 || !ok || hw == "" || slices.Contains(s.Hardware, hw)
}

// Execution is one device's part in a rollout.
type Execution struct {
	DeviceID string `json:"device_id"`
	Wave     int    `json:"wave"`
	// Status is "PENDING" (not given the job yet), a job status, or
	// "CANCELED".
	Status string `json:"status"`
	// JobID and DesiredVersion name the job the device was given.
	JobID          string `json:"job_id,omitempty"`
	DesiredVersion uint64 `json:"desired_version,omitempty"`
	// Attempts counts the times the device was given the job.
	Attempts     uint32    `json:"attempts,omitempty"`
	DispatchedAt time.Time `json:"dispatched_at,omitzero"`
	SucceededAt  time.Time `json:"succeeded_at,omitzero"`
	EndedAt      time.Time `json:"ended_at,omitzero"`
	// LastStatus is how the previous attempt ended, while the execution
	// waits for a retry.
	LastStatus string `json:"last_status,omitempty"`
	// RolledBack is set once the rollback bundle was given to the device.
	RolledBack bool   `json:"rolled_back,omitempty"`
	Message    string `json:"message,omitempty"`
	// ConsentSince is when the device began waiting for consent (or its
	// maintenance window) in this attempt, while it waits; ConsentWaited
	// sums the waits that ended. Neither counts against the device
	// timeout.
	ConsentSince  time.Time     `json:"consent_since,omitzero"`
	ConsentWaited time.Duration `json:"consent_waited,omitempty"`
}

// Rollouts stores rollouts and their executions. Writes by the controller
// carry the fencing token of its lease (see Leases) and fail with ErrFenced
// once another controller holds it; fence 0 skips the check (operators'
// writes, which compare-and-set instead).
type Rollouts interface {
	// CreateRollout stores r at version 1, or fails with ErrExists.
	CreateRollout(ctx context.Context, r Rollout) (Rollout, error)
	// GetRollout returns a rollout, or ErrNotFound.
	GetRollout(ctx context.Context, id string) (Rollout, error)
	// ListRollouts returns up to limit rollouts with ids before before
	// ("" for the first page), newest (highest id) first.
	ListRollouts(ctx context.Context, before string, limit int) ([]Rollout, error)
	// UpdateRollout replaces a rollout if its version is still expect;
	// r.Version must be expect+1. It returns ErrConflict with the stored
	// rollout when the version moved, ErrNotFound, or ErrFenced.
	UpdateRollout(ctx context.Context, expect uint64, r Rollout, fence uint64) (Rollout, error)
	// PutExecutions stores (adds or replaces, by device id) executions of
	// a rollout, all or none.
	PutExecutions(ctx context.Context, rolloutID string, fence uint64, execs []Execution) error
	// ListExecutions returns every execution of a rollout, in device-id
	// order.
	ListExecutions(ctx context.Context, rolloutID string) ([]Execution, error)
}

// Leases elects one holder of a named duty among ferryd instances.
type Leases interface {
	// AcquireLease takes the lease for holder for ttl, or renews it if
	// holder has it. It returns the lease's fencing token, which grows
	// every time the lease changes hands, or ErrLeaseHeld.
	AcquireLease(ctx context.Context, name, holder string, ttl time.Duration) (fence uint64, err error)
	// ReleaseLease gives the lease up if holder has it.
	ReleaseLease(ctx context.Context, name, holder string) error
}

// RolloutLease is the name of the lease of the rollout controller; fenced
// rollout writes check against it.
const RolloutLease = "rollouts"
