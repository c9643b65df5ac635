package rollout

// Safety tests: what the controller must not do when stores fail, operators
// race it, instances stop in the middle of a step, or input is extreme.

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

// flakyDevices fails the first failSets calls to SetDesired (before
// writing anything), as a Redis timeout would.
type flakyDevices struct {
	store.Devices
	mu       sync.Mutex
	failSets int
}

var errFlaky = errors.New("i/o timeout (injected)")

func (f *flakyDevices) SetDesired(ctx context.Context, id string, expect uint64, d store.Desired, w store.Write) (store.Device, error) {
	f.mu.Lock()
	fail := f.failSets > 0
	if fail {
		f.failSets--
	}
	f.mu.Unlock()
	if fail {
		return store.Device{}, errFlaky
	}
	return f.Devices.SetDesired(ctx, id, expect, d, w)
}

// takeOver makes c the leading controller of h instead of the harness's.
func (h *harness) takeOver(c *Controller) {
	h.t.Helper()
	if err := h.db.ReleaseLease(h.ctx, store.RolloutLease, h.c.cfg.Holder); err != nil {
		h.t.Fatal(err)
	}
	h.lead(c)
	h.c = c
}

// TestControllerGiveErrorStrandsNothing: when giving a device the job fails
// (a store timeout), that device and every one picked after it go back to
// PENDING, in memory and in the store, and are given the job on a later
// tick; none stays QUEUED without a job.
func TestControllerGiveErrorStrandsNothing(t *testing.T) {
	h := newHarness(t)
	devs := h.fleet("gw", 4, canary)
	flaky := &flakyDevices{Devices: h.db}
	rep := replica.New(replica.Config{Devices: flaky, Logger: quiet, Now: h.clk.Now})
	c := NewController(ControllerConfig{Rollouts: h.db, Leases: h.db, Replica: rep, Holder: "flaky",
		LeaseTTL: time.Minute, Tick: time.Second, Resync: time.Nanosecond, Logger: quiet, Now: h.clk.Now})
	h.takeOver(c)
	spec := validSpec()
	spec.DeviceTimeout = time.Minute
	spec.Retries = 1
	id := h.create(spec)
	h.step(time.Second) // start
	flaky.failSets = 1
	h.step(time.Second) // dispatch: the first give fails
	for range 10 {
		h.step(time.Second)
		for _, dev := range devs {
			if h.given(dev, id) && h.execs(id)[dev].Status == queued && h.device(dev).Reported.Job.ID == "" {
				h.answer(dev, replica.StatusSucceeded)
			}
		}
	}
	h.step(2 * time.Minute) // past the device timeout too
	r := h.rollout(id)
	for dev, e := range h.execs(id) {
		if e.Status == queued && e.JobID == "" {
			t.Errorf("%s stuck QUEUED without a job (given the job: %v): %+v", dev, h.given(dev, id), e)
		}
	}
	if r.State != StateCompleted {
		t.Errorf("rollout %s, counts %v; want COMPLETED", r.State, r.Counts)
	}
}

// TestControllerRollbackKeepsNewerDesiredState: a cancel (or abort) with
// rollback gives the rollback bundle only to devices whose desired state is
// still this rollout's job: a device an operator (or a later rollout) gave
// something else since is not downgraded.
func TestControllerRollbackKeepsNewerDesiredState(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 2, canary)
	spec := validSpec()
	spec.Continuous = true
	spec.RollbackBundle = oldBundle
	id := h.create(spec)
	for range 4 {
		h.step(time.Second)
		h.answerAll(h.with(id, queued), replica.StatusSucceeded)
	}
	if r := h.rollout(id); r.Counts[succeeded] != 2 || r.Waves[0].State != WaveDone {
		t.Fatalf("setup: %s %v %+v", r.State, r.Counts, r.Waves)
	}
	hotfix := bundle("fw-3.bin")
	if _, err := h.rep.SetDesired(h.ctx, "gw-00", replica.Document{Bundle: hotfix}, "operator:bob", nil); err != nil {
		t.Fatal(err)
	}
	h.answer("gw-00", replica.StatusSucceeded)
	h.step(time.Second)
	if _, err := h.svc.Cancel(h.ctx, id, "ann", true); err != nil {
		t.Fatal(err)
	}
	h.step(time.Second)
	if d := h.device("gw-00"); d.Desired.Bundle != hotfix {
		t.Errorf("gw-00 was moved on to %s by operator:bob; the rollback of %s replaced it: desired %s (forced %v) set by %s",
			hotfix.TargetPath, id, d.Desired.Bundle.TargetPath, d.Desired.Forced, d.Desired.SetBy)
	}
}

// TestControllerRollbackGivenOnce: a controller that stopped after giving
// devices the rollback bundle but before recording it leaves executions
// that do not say so; the one that takes over sees the rollback in the
// devices' desired state and does not give it a second time.
func TestControllerRollbackGivenOnce(t *testing.T) {
	h := newHarness(t)
	devs := h.fleet("gw", 2, canary)
	spec := validSpec()
	spec.RollbackBundle = oldBundle
	id := h.create(spec)
	h.step(time.Second)
	h.step(time.Second)
	h.answer("gw-00", replica.StatusSucceeded) // gw-01 still at work
	h.step(time.Second)
	if _, err := h.svc.Cancel(h.ctx, id, "ann", true); err != nil {
		t.Fatal(err)
	}
	// The controller that finished the rollout gave gw-00 the rollback
	// bundle, then stopped before it recorded it.
	if _, err := h.rep.SetDesired(h.ctx, "gw-00", replica.Document{Bundle: oldBundle, Forced: true}, setBy(id)+"/rollback", nil); err != nil {
		t.Fatal(err)
	}
	b := h.controller("b", time.Minute, time.Nanosecond)
	h.takeOver(b)
	h.step(time.Second)
	if r := h.rollout(id); !Ended(r) {
		t.Fatalf("rollout %s not ended", r.State)
	}
	for _, dev := range devs {
		if d := h.device(dev); d.Desired.Version != 2 {
			t.Errorf("%s: desired version %d (%s by %s), want 2: the rollback bundle was given %d times",
				dev, d.Desired.Version, d.Desired.Bundle.TargetPath, d.Desired.SetBy, d.Desired.Version-1)
		}
	}
}

// TestControllerRollbackReachesRetryWaiting: a device that timed out and
// waits for its retry still has the rollout's job as its desired state
// (the timeout is the controller's; the device may yet install it), so a
// cancel with rollback gives it the rollback bundle, as it does a
// TIMED_OUT device without a retry left.
func TestControllerRollbackReachesRetryWaiting(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 2, canary)
	spec := validSpec()
	spec.DeviceTimeout = 10 * time.Minute
	spec.Retries = 1
	spec.RollbackBundle = oldBundle
	id := h.create(spec)
	h.step(time.Second)
	h.step(time.Second)
	q := h.with(id, queued)
	if len(q) != 2 {
		t.Fatalf("at work: %v", q)
	}
	h.answer(q[0], replica.StatusSucceeded)
	if _, err := h.svc.Pause(h.ctx, id, "ann"); err != nil {
		t.Fatal(err)
	}
	h.step(11 * time.Minute) // q[1] times out; its retry waits for resume
	if e := h.execs(id)[q[1]]; e.Status != ExecPending {
		t.Fatalf("%s: %+v", q[1], e)
	}
	if _, err := h.svc.Cancel(h.ctx, id, "ann", true); err != nil {
		t.Fatal(err)
	}
	h.step(time.Second)
	if d := h.device(q[0]); d.Desired.Bundle != oldBundle {
		t.Fatalf("%s not rolled back", q[0])
	}
	if d := h.device(q[1]); d.Desired.Bundle == newBundle {
		t.Errorf("%s was given the job, timed out, and keeps it after a cancel with rollback: desired %s set by %s (execution %+v)",
			q[1], d.Desired.Bundle.TargetPath, d.Desired.SetBy, h.execs(id)[q[1]])
	}
}

// cancelOnIntent cancels the rollout (through the operator's service)
// just before the controller records its intent to give devices the job:
// the cancel lands while the controller works from the state it read.
type cancelOnIntent struct {
	store.Rollouts
	svc  *Service
	once sync.Once
	t    *testing.T
}

func (c *cancelOnIntent) PutExecutions(ctx context.Context, id string, fence uint64, execs []store.Execution) error {
	for _, e := range execs {
		if e.Status == queued && e.JobID == "" {
			c.once.Do(func() {
				if _, err := c.svc.Cancel(ctx, id, "ann", false); err != nil {
					c.t.Errorf("cancel: %v", err)
				}
			})
			break
		}
	}
	return c.Rollouts.PutExecutions(ctx, id, fence, execs)
}

// TestControllerCancelStopsDispatch: a cancel that lands while the
// controller is about to give devices the job (after it read the rollout
// at the start of the tick) stops the dispatch: no device is given the
// job once the operator was told the rollout is CANCELED.
func TestControllerCancelStopsDispatch(t *testing.T) {
	h := newHarness(t)
	devs := h.fleet("gw", 5, canary)
	ro := &cancelOnIntent{Rollouts: h.db, svc: h.svc, t: t}
	c := NewController(ControllerConfig{Rollouts: ro, Leases: h.db, Replica: h.rep, Holder: "racy",
		LeaseTTL: time.Minute, Tick: time.Second, Resync: time.Nanosecond, Logger: quiet, Now: h.clk.Now})
	h.takeOver(c)
	id := h.create(validSpec())
	h.step(time.Second) // start
	h.step(time.Second) // dispatch; the cancel lands before the job is given
	h.step(time.Second)
	r := h.rollout(id)
	if r.State != StateCanceled {
		t.Fatalf("state %s", r.State)
	}
	var given []string
	for _, dev := range devs {
		if h.given(dev, id) {
			given = append(given, dev)
		}
	}
	if len(given) > 0 {
		t.Errorf("after the cancel was acknowledged, %d devices were given the job: %v (counts %v)", len(given), given, r.Counts)
	}
}

// TestControllerHugeMaxInFlight: a max_in_flight above math.MaxInt64 (an
// operator's "no limit", 2^64-1, stored before limits were checked) does
// not stop every device from being given the job.
func TestControllerHugeMaxInFlight(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 3, canary)
	spec := validSpec()
	spec.MaxInFlight = math.MaxUint64
	var ie *replica.InvalidError
	if err := Validate(spec); !errors.As(err, &ie) || ie.Field != "strategy.max_in_flight" {
		t.Errorf("Validate = %v, want an error on strategy.max_in_flight", err)
	}
	id := h.storeUnchecked(spec)
	h.step(time.Second)
	h.step(time.Second)
	if got := h.with(id, queued); len(got) != 3 {
		t.Errorf("max_in_flight %d: at work %v, want all 3 (counts %v)", spec.MaxInFlight, got, h.rollout(id).Counts)
	}
}

// TestControllerHugeRate: a huge base_per_minute (stored before limits were
// checked) is capped, so the budget of a tick never overflows and every
// device is given the job.
func TestControllerHugeRate(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 3, canary)
	spec := validSpec()
	spec.Rate = &store.RateSpec{PerMinute: 1e300}
	var ie *replica.InvalidError
	if err := Validate(spec); !errors.As(err, &ie) || ie.Field != "strategy.rate.base_per_minute" {
		t.Errorf("Validate = %v, want an error on strategy.rate.base_per_minute", err)
	}
	id := h.storeUnchecked(spec)
	for range 10 {
		h.step(time.Second)
	}
	if got := h.with(id, queued); len(got) != 3 {
		t.Errorf("rate %g a minute: at work after 10 s %v, want all 3 (counts %v)", spec.Rate.PerMinute, got, h.rollout(id).Counts)
	}
}

// storeUnchecked stores a rollout without the operator API's checks, as
// an older ferryd with looser limits may have.
func (h *harness) storeUnchecked(spec store.RolloutSpec) string {
	h.t.Helper()
	now := h.clk.Now().UTC()
	r, err := h.db.CreateRollout(h.ctx, store.Rollout{ID: newID(now), Spec: spec, State: StateRunning, CreatedAt: now, UpdatedAt: now})
	if err != nil {
		h.t.Fatal(err)
	}
	return r.ID
}

// slowDevices makes every GetDevice take delay, as a store across a
// network does.
type slowDevices struct {
	store.Devices
	delay time.Duration
}

func (s *slowDevices) GetDevice(ctx context.Context, id string) (store.Device, error) {
	time.Sleep(s.delay)
	return s.Devices.GetDevice(ctx, id)
}

// TestControllerPassLongerThanLease: a full pass that takes longer than
// the lease's TTL (many devices, a slow store) still completes, because Run
// renews the lease on its own while the pass goes on. Scaled down here (60
// devices, 2 ms a read, a 50 ms lease); at 0.5 ms a read over a network and
// the default 15 s lease, that is a wave of about 30,000 devices.
func TestControllerPassLongerThanLease(t *testing.T) {
	h := newHarness(t)
	devs := h.fleet("gw", 60, canary)
	id := h.create(validSpec())
	h.step(time.Second)
	h.step(time.Second)
	if got := h.with(id, queued); len(got) != 60 {
		t.Fatalf("at work: %d", len(got))
	}
	h.answerAll(devs, replica.StatusSucceeded)

	rep := replica.New(replica.Config{Devices: &slowDevices{Devices: h.db, delay: 2 * time.Millisecond}, Logger: quiet, Now: h.clk.Now})
	c := NewController(ControllerConfig{Rollouts: h.db, Leases: h.db, Replica: rep, Holder: "slow",
		LeaseTTL: 50 * time.Millisecond, Tick: time.Second, Resync: time.Nanosecond, Logger: quiet, Now: h.clk.Now})
	h.takeOver(c)
	c.cfg.Now, c.cfg.Tick = time.Now, 10*time.Millisecond
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }() // renews the lease on its own, during the long passes
	deadline := time.Now().Add(10 * time.Second)
	for h.rollout(id).State != StateCompleted && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	var errs []error
	if r := h.rollout(id); r.State != StateCompleted {
		t.Errorf("rollout %s, counts %v; tick errors: %v", r.State, r.Counts, errs)
	}
}
