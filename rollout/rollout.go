// Package rollout runs staged, health-gated campaigns: a bundle goes to a
// target set (a label selector or a list of devices) wave by wave, or at an
// exponentially growing rate, with at most so many devices at work at once.
// A wave starts only after the previous one's devices succeeded and stayed
// healthy for the soak time; abort rules stop the rollout when too many
// executions fail, and give the devices already moved a rollback bundle.
//
// Operators create, pause, resume and cancel rollouts through Service;
// Controller does the work. One controller is active across all ferryd
// instances: it holds a lease in the store and fences its writes with the
// lease's token, and everything it knows is in the store, so another
// instance takes over where it stopped.
package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

// States of a rollout.
const (
	StateScheduled = "SCHEDULED" // waiting for its start time
	StateRunning   = "RUNNING"
	StatePaused    = "PAUSED"
	StateCompleted = "COMPLETED"
	StateAborted   = "ABORTED" // an abort rule fired
	StateCanceled  = "CANCELED"
)

// States of a wave.
const (
	WavePending = "PENDING"
	WaveRunning = "RUNNING"
	WaveSoaking = "SOAKING"
	WaveDone    = "DONE"
	// WaveStopped: the rollout ended (aborted or cancelled) before the
	// wave was done.
	WaveStopped = "STOPPED"
)

// Statuses of an execution beyond the job statuses of package replica.
const (
	// ExecPending: the device has not been given the job yet.
	ExecPending = "PENDING"
	// ExecCanceled: the rollout ended before the device was given the job.
	ExecCanceled = "CANCELED"
	// ExecIncompatible: the bundle's signed hardware list does not name
	// the device's hardware attribute; the device is left out, never given
	// the job, and counted apart (Rollout.Incompatible), not by abort rules.
	ExecIncompatible = "INCOMPATIBLE"
)

// Limits on a rollout's specification.
const (
	MaxWaves       = 100
	MaxDevices     = 10000 // devices named one by one
	MaxAbortRules  = 8
	MaxNameBytes   = 200
	MaxRetries     = 10
	MaxInFlight    = 1_000_000
	minRatePerMin  = 0.01
	maxRatePerMin  = 1e6
	maxRateFactor  = 100
	maxDeviceDelay = 30 * 24 * time.Hour
)

// Errors of the operator API.
var (
	// ErrNotFound: no rollout has that id.
	ErrNotFound = errors.New("rollout not found")
	// ErrState: the rollout's state does not allow the change asked.
	ErrState = errors.New("not allowed in the rollout's state")
)

// Ended reports whether a rollout is over and its controller work done.
func Ended(r store.Rollout) bool { return !r.EndedAt.IsZero() }

// Config holds a Service's dependencies. Zero fields get defaults.
type Config struct {
	Rollouts store.Rollouts
	Logger   *slog.Logger
	Now      func() time.Time
	// WatchInterval is how often Watch looks for changes (default 500 ms).
	WatchInterval time.Duration
}

// Service is the operator's side of rollouts: create, read, steer.
type Service struct {
	rollouts      store.Rollouts
	log           *slog.Logger
	now           func() time.Time
	watchInterval time.Duration
}

// New returns a Service on cfg.
func New(cfg Config) *Service {
	s := &Service{rollouts: cfg.Rollouts, log: cfg.Logger, now: cfg.Now, watchInterval: cfg.WatchInterval}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.watchInterval <= 0 {
		s.watchInterval = 500 * time.Millisecond
	}
	return s
}

func invalid(field, format string, args ...any) error {
	return &replica.InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Validate checks a specification.
func Validate(spec store.RolloutSpec) error {
	if len(spec.Name) > MaxNameBytes || strings.ContainsFunc(spec.Name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return invalid("name", "must be at most %d bytes without control characters", MaxNameBytes)
	}
	if spec.Bundle.IsZero() {
		return invalid("bundle", "is required")
	}
	if err := validateConsent(spec.Bundle, spec.Consent); err != nil {
		return err
	}
	if err := validateBundle("bundle", spec.Bundle); err != nil {
		return err
	}
	if !spec.RollbackBundle.IsZero() {
		if err := validateBundle("rollback_bundle", spec.RollbackBundle); err != nil {
			return err
		}
	}
	if err := validateTarget(spec); err != nil {
		return err
	}
	if err := validateStrategy(spec); err != nil {
		return err
	}
	if len(spec.Abort) > MaxAbortRules {
		return invalid("abort_rules", "has %d rules, at most %d allowed", len(spec.Abort), MaxAbortRules)
	}
	for i, r := range spec.Abort {
		field := fmt.Sprintf("abort_rules[%d]", i)
		switch replica.JobStatus(r.Status) {
		case replica.StatusFailed, replica.StatusRejected, replica.StatusTimedOut, replica.StatusRolledBack:
		default:
			return invalid(field+".status", "must be FAILED, REJECTED, TIMED_OUT or ROLLED_BACK")
		}
		if !(r.Percent > 0 && r.Percent <= 100) {
			return invalid(field+".percent", "must be above 0 and at most 100")
		}
	}
	if spec.Window != nil {
		if _, err := parseWindow(*spec.Window); err != nil {
			return invalid("maintenance_window", "%v", err)
		}
	}
	return nil
}

// validateBundle checks a bundle as the replica checks a desired
// document's, naming the rollout's field.
func validateBundle(field string, b store.Bundle) error {
	err := (replica.Document{Bundle: b}).Validate()
	var ie *replica.InvalidError
	if errors.As(err, &ie) {
		return invalid(strings.Replace(ie.Field, "document.bundle", field, 1), "%s", ie.Reason)
	}
	return err
}

// validateConsent checks a rollout's consent policy as the replica checks
// a desired document's, naming the rollout's field.
func validateConsent(b store.Bundle, c *store.ConsentPolicy) error {
	if c == nil || b.IsZero() {
		return nil // a missing bundle is reported by its own check
	}
	err := (replica.Document{Bundle: b, Consent: c}).Validate()
	var ie *replica.InvalidError
	if errors.As(err, &ie) && strings.HasPrefix(ie.Field, "document.consent") {
		return invalid(strings.Replace(ie.Field, "document.consent", "consent", 1), "%s", ie.Reason)
	}
	return nil // bundle errors are reported by validateBundle
}

func validateTarget(spec store.RolloutSpec) error {
	switch {
	case !spec.HasTargetSelector() && len(spec.Devices) == 0:
		return invalid("selector", "a selector, a group or device ids are required")
	case spec.HasTargetSelector() && len(spec.Devices) > 0:
		return invalid("device_ids", "give a selector or device ids, not both")
	case len(spec.Devices) > MaxDevices:
		return invalid("device_ids", "has %d devices, at most %d allowed", len(spec.Devices), MaxDevices)
	case spec.Continuous && len(spec.Devices) > 0:
		return invalid("continuous", "needs a selector: a list of devices does not grow")
	}
	seen := make(map[string]bool, len(spec.Devices))
	for _, id := range spec.Devices {
		if !credentials.ValidDeviceID(id) {
			return invalid("device_ids", "%q is not a device id", id)
		}
		if seen[id] {
			return invalid("device_ids", "%q is listed twice", id)
		}
		seen[id] = true
	}
	return nil
}

func validateStrategy(spec store.RolloutSpec) error {
	if len(spec.Waves) > 0 && spec.Rate != nil {
		return invalid("strategy", "give waves or a rate, not both")
	}
	if len(spec.Waves) > MaxWaves {
		return invalid("strategy.waves", "has %d waves, at most %d allowed", len(spec.Waves), MaxWaves)
	}
	for i, w := range spec.Waves {
		field := fmt.Sprintf("strategy.waves[%d]", i)
		switch {
		case w.Count > 0 && w.Percent != 0:
			return invalid(field, "give a percent or a count, not both")
		case w.Count == 0 && !(w.Percent > 0 && w.Percent <= 100):
			return invalid(field, "needs a count above 0 or a percent above 0 and at most 100")
		}
	}
	if r := spec.Rate; r != nil {
		switch {
		case !(r.PerMinute >= minRatePerMin && r.PerMinute <= maxRatePerMin):
			return invalid("strategy.rate.base_per_minute", "must be between %v and %v", minRatePerMin, maxRatePerMin)
		case r.Factor != 0 && !(r.Factor >= 1 && r.Factor <= maxRateFactor):
			return invalid("strategy.rate.factor", "must be between 1 and %d", maxRateFactor)
		case r.Factor > 1 && r.RaiseAfter == 0:
			return invalid("strategy.rate.raise_after_successes", "is required with a factor")
		}
	}
	switch {
	case spec.MaxInFlight > MaxInFlight:
		return invalid("strategy.max_in_flight", "must be at most %d (0: no limit)", MaxInFlight)
	case spec.DeviceTimeout < 0 || spec.DeviceTimeout > maxDeviceDelay:
		return invalid("strategy.device_timeout", "must be between 0 and %v", maxDeviceDelay)
	case spec.Soak < 0 || spec.Soak > maxDeviceDelay:
		return invalid("strategy.soak", "must be between 0 and %v", maxDeviceDelay)
	case spec.Retries > MaxRetries:
		return invalid("strategy.retries", "must be at most %d", MaxRetries)
	}
	return nil
}

// Create stores a new rollout; the controller starts it at spec.StartAt.
func (s *Service) Create(ctx context.Context, spec store.RolloutSpec, by string) (store.Rollout, error) {
	if err := Validate(spec); err != nil {
		return store.Rollout{}, err
	}
	now := s.now().UTC()
	state := StateRunning
	if spec.StartAt.After(now) {
		state = StateScheduled
	}
	r := store.Rollout{ID: newID(now), Spec: spec, State: state, CreatedBy: by, CreatedAt: now, UpdatedAt: now}
	r, err := s.rollouts.CreateRollout(ctx, r)
	if err != nil {
		return store.Rollout{}, fmt.Errorf("create rollout: %w", err)
	}
	s.log.InfoContext(ctx, "rollout created", "rollout", r.ID, "bundle", spec.Bundle.TargetPath, "by", by)
	return r, nil
}

// newID returns an id that sorts by creation time, to the millisecond:
// "r-20261122-213500-042-1a2b3c".
func newID(now time.Time) string {
	b := make([]byte, 3)
	rand.Read(b)
	return "r-" + strings.Replace(now.UTC().Format("20060102-150405.000"), ".", "-", 1) + "-" + hex.EncodeToString(b)
}

func validateID(id string) error {
	if id == "" || len(id) > 64 || strings.ContainsFunc(id, func(r rune) bool {
		return !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z')
	}) {
		return invalid("rollout_id", "is not a rollout id")
	}
	return nil
}

// Get returns a rollout.
func (s *Service) Get(ctx context.Context, id string) (store.Rollout, error) {
	if err := validateID(id); err != nil {
		return store.Rollout{}, err
	}
	r, err := s.rollouts.GetRollout(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.Rollout{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return r, err
}

// List returns up to limit rollouts created before the one with id
// before ("" for the newest), newest first.
func (s *Service) List(ctx context.Context, before string, limit int) ([]store.Rollout, error) {
	if before != "" {
		if err := validateID(before); err != nil {
			return nil, invalid("page_token", "is not a token of this list")
		}
	}
	return s.rollouts.ListRollouts(ctx, before, limit)
}

// Pause stops giving the job to more devices.
func (s *Service) Pause(ctx context.Context, id, by string) (store.Rollout, error) {
	return s.steer(ctx, id, func(r *store.Rollout) error {
		switch r.State {
		case StatePaused:
			return nil
		case StateRunning, StateScheduled:
			r.State, r.Reason = StatePaused, "paused by "+by
			return nil
		}
		return fmt.Errorf("pause a %s rollout: %w", r.State, ErrState)
	})
}

// Resume continues a paused rollout.
func (s *Service) Resume(ctx context.Context, id, by string) (store.Rollout, error) {
	return s.steer(ctx, id, func(r *store.Rollout) error {
		switch r.State {
		case StateRunning, StateScheduled:
			return nil
		case StatePaused:
			r.State, r.Reason = StateRunning, "resumed by "+by
			if r.StartedAt.IsZero() && r.Spec.StartAt.After(s.now()) {
				r.State = StateScheduled
			}
			return nil
		}
		return fmt.Errorf("resume a %s rollout: %w", r.State, ErrState)
	})
}

// Cancel ends a rollout: devices not given the job yet are CANCELED and,
// with rollback, the devices already moved get the rollback bundle.
func (s *Service) Cancel(ctx context.Context, id, by string, rollback bool) (store.Rollout, error) {
	return s.steer(ctx, id, func(r *store.Rollout) error {
		if r.State == StateCanceled && !rollback {
			return nil
		}
		if Ended(*r) || r.State == StateAborted {
			return fmt.Errorf("cancel a %s rollout: %w", r.State, ErrState)
		}
		if rollback && r.Spec.RollbackBundle.IsZero() {
			return invalid("rollback", "the rollout has no rollback bundle")
		}
		r.State, r.Reason, r.Rollback = StateCanceled, "canceled by "+by, rollback
		return nil
	})
}

// steer applies an operator's change with compare-and-set, again if the
// controller wrote in between.
func (s *Service) steer(ctx context.Context, id string, change func(*store.Rollout) error) (store.Rollout, error) {
	for {
		cur, err := s.Get(ctx, id)
		if err != nil {
			return store.Rollout{}, err
		}
		next := cur
		if err := change(&next); err != nil {
			return cur, err
		}
		if next.State == cur.State && next.Rollback == cur.Rollback {
			return cur, nil
		}
		next.Version, next.UpdatedAt = cur.Version+1, s.now().UTC()
		r, err := s.rollouts.UpdateRollout(ctx, cur.Version, next, 0)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err == nil {
			s.log.InfoContext(ctx, "rollout steered", "rollout", id, "state", r.State, "reason", r.Reason)
		}
		return r, err
	}
}

// Watch calls send with the rollout now and after every change, until the
// rollout has ended (after sending it once more), ctx ends, or send fails.
func (s *Service) Watch(ctx context.Context, id string, send func(store.Rollout) error) error {
	var last uint64
	tick := time.NewTicker(s.watchInterval)
	defer tick.Stop()
	for {
		r, err := s.Get(ctx, id)
		if err != nil {
			return err
		}
		if r.Version != last {
			last = r.Version
			if err := send(r); err != nil {
				return err
			}
		}
		if Ended(r) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// ExecStatuses are the statuses an execution may have.
var ExecStatuses = []string{ExecPending, string(replica.StatusQueued), string(replica.StatusInProgress),
	string(replica.StatusSucceeded), string(replica.StatusFailed), string(replica.StatusRejected),
	string(replica.StatusTimedOut), string(replica.StatusRolledBack), ExecCanceled, ExecIncompatible}

// Executions returns up to limit of a rollout's executions with device ids
// after after, in device-id order; with status, only those with it.
func (s *Service) Executions(ctx context.Context, id, status, after string, limit int) ([]store.Execution, error) {
	if status != "" && !slices.Contains(ExecStatuses, status) {
		return nil, invalid("status", "must be one of %s", strings.Join(ExecStatuses, ", "))
	}
	if _, err := s.Get(ctx, id); err != nil {
		return nil, err
	}
	all, err := s.rollouts.ListExecutions(ctx, id)
	if err != nil {
		return nil, err
	}
	var out []store.Execution
	for _, e := range all {
		if e.DeviceID > after && (status == "" || e.Status == status) {
			out = append(out, e)
			if len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// terminal reports whether an execution is over.
func terminal(status string) bool {
	return status != ExecPending && status != string(replica.StatusQueued) && status != string(replica.StatusInProgress)
}

// inFlight reports whether a device is working on the job.
func inFlight(status string) bool {
	return status == string(replica.StatusQueued) || status == string(replica.StatusInProgress)
}
