package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

// ControllerConfig holds a Controller's dependencies. Zero fields get
// defaults.
type ControllerConfig struct {
	Rollouts store.Rollouts
	Leases   store.Leases
	Replica  *replica.Service
	// Holder names this instance in the lease; required.
	Holder string
	// LeaseTTL is how long the lease lasts without renewal: the longest a
	// crashed controller's rollouts wait for another (default 15 s). It is
	// renewed every third of it.
	LeaseTTL time.Duration
	// Tick is how often rollouts move on (default 1 s).
	Tick time.Duration
	// Resync is how often every execution is checked against its device,
	// in case a change notice was lost (default 30 s).
	Resync time.Duration
	// SilentAfter is how long a device may go unseen (no report, no
	// answered ping) before it no longer counts as healthy in a soak
	// (default 3 min; ferryd uses three ping intervals).
	SilentAfter time.Duration
	Logger      *slog.Logger
	Now         func() time.Time
	// Observe, if set, is told of each abort an abort rule decides
	// (EventAborted) and each device given the rollback bundle
	// (EventRolledBack), for metrics. It must be quick.
	Observe func(event string)
	// Ticks, if set, is told of every tick this controller runs as the
	// leader (ferryd traces them).
	Ticks TickTracer
}

// TickTracer follows the controller's ticks: StartTick is called as a tick
// begins, the tick runs with the context it returns, and end is called
// with the tick's result.
type TickTracer interface {
	StartTick(ctx context.Context) (tickCtx context.Context, end func(error))
}

// The events ControllerConfig.Observe is told of.
const (
	EventAborted    = "aborted"
	EventRolledBack = "rolled_back"
)

// Controller moves rollouts on: it gives devices the job wave by wave,
// follows their reports, and applies timeouts, retries, soaks, abort rules
// and rollbacks. Run it in every ferryd; one at a time is active.
type Controller struct {
	cfg     ControllerConfig
	log     *slog.Logger
	leading atomic.Bool
	// fence is the lease's fencing token while leading; the lease is
	// renewed in its own goroutine, so that a long pass does not outlive
	// it.
	fence atomic.Uint64

	// The rest belongs to the goroutine that calls reconcileAll.
	runsFence  uint64 // the fence runs were read under
	runs       map[string]*run
	lastResync time.Time
	newest     string // the newest rollout id seen

	mu    sync.Mutex
	dirty map[string]struct{} // devices that changed since the last tick
}

// run is what the controller holds about one active rollout.
type run struct {
	execs map[string]*store.Execution
	order []string // dispatch order: the shuffled plan, then devices that joined
	// changed holds the devices whose execution must be written.
	changed map[string]struct{}
	tokens  float64 // rate strategy: devices that may be given the job now
	last    time.Time
	// seen is when each device was last seen, as last read.
	seen map[string]time.Time
}

func (rn *run) touch(id string) { rn.changed[id] = struct{}{} }

// NewController returns a controller on cfg.
func NewController(cfg ControllerConfig) *Controller {
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 15 * time.Second
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.SilentAfter <= 0 {
		cfg.SilentAfter = 3 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Controller{cfg: cfg, log: log.With("component", "rollouts"), runs: map[string]*run{}, dirty: map[string]struct{}{}}
}

// Leading reports whether this controller holds the lease.
func (c *Controller) Leading() bool { return c.leading.Load() }

// Run takes the lease when it is free and, while it holds it, moves every
// active rollout on. It returns when ctx ends, giving the lease up.
func (c *Controller) Run(ctx context.Context) error {
	watching := make(chan struct{})
	defer func() { <-watching }()
	go func() {
		defer close(watching)
		c.watchWhileLeading(ctx)
	}()
	defer func() {
		if c.leading.Swap(false) {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if err := c.cfg.Leases.ReleaseLease(rctx, store.RolloutLease, c.cfg.Holder); err != nil {
				c.log.Warn("release the rollout lease", "err", err)
			}
		}
	}()

	// The renewer is waited for before the lease is released (defers run
	// last first): a renewal still under way would take the lease again
	// after the release and hold it for a stopped instance.
	renewing := make(chan struct{})
	defer func() { <-renewing }()
	go func() {
		defer close(renewing)
		renew := time.NewTicker(c.cfg.LeaseTTL / 3)
		defer renew.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-renew.C:
				c.renew(ctx)
			}
		}
	}()

	tick := time.NewTicker(c.cfg.Tick)
	defer tick.Stop()
	c.renew(ctx)
	for {
		if c.Leading() {
			if err := c.tick(ctx); err != nil && ctx.Err() == nil {
				if errors.Is(err, store.ErrFenced) {
					c.lose("another instance holds the rollout lease")
				} else {
					c.log.Warn("rollouts: tick failed; trying again", "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// tick moves every active rollout on once.
func (c *Controller) tick(ctx context.Context) error {
	if c.cfg.Ticks == nil {
		return c.reconcileAll(ctx)
	}
	ctx, end := c.cfg.Ticks.StartTick(ctx)
	err := c.reconcileAll(ctx)
	end(err)
	return err
}

// watchWhileLeading marks the devices that change dirty while this
// controller leads, until ctx ends. Only the leader watches the whole
// fleet, so the other instances receive only the change notices of the
// devices they hold; a controller that takes over reads everything anyway.
func (c *Controller) watchWhileLeading(ctx context.Context) {
	poll := time.NewTicker(c.cfg.Tick)
	defer poll.Stop()
	for {
		for !c.Leading() {
			select {
			case <-ctx.Done():
				return
			case <-poll.C:
			}
		}
		w, err := c.cfg.Replica.Watch(ctx)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("rollouts: watch the fleet; trying again", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-poll.C:
			}
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		go func() { // end the watch when the lease is lost
			defer cancel()
			for c.Leading() {
				select {
				case <-wctx.Done():
					return
				case <-poll.C:
				}
			}
		}()
		for {
			ids, err := w.Next(wctx)
			if err != nil {
				break
			}
			c.mu.Lock()
			for _, id := range ids {
				c.dirty[id] = struct{}{}
			}
			c.mu.Unlock()
		}
		cancel()
		w.Close()
		if ctx.Err() != nil {
			return
		}
	}
}

// renew takes or renews the lease.
func (c *Controller) renew(ctx context.Context) {
	fence, err := c.cfg.Leases.AcquireLease(ctx, store.RolloutLease, c.cfg.Holder, c.cfg.LeaseTTL)
	switch {
	case errors.Is(err, store.ErrLeaseHeld):
		c.lose("")
	case err != nil:
		if ctx.Err() == nil {
			c.log.Warn("rollout lease", "err", err)
		}
		c.lose("")
	case ctx.Err() != nil:
		// Stopping: Run releases the lease this renewal holds.
		c.fence.Store(fence)
		c.leading.Store(true)
	case fence != c.fence.Load() || !c.Leading():
		c.fence.Store(fence)
		c.leading.Store(true)
		c.log.Info("rollout controller leading", "holder", c.cfg.Holder, "fence", fence)
	}
}

func (c *Controller) lose(why string) {
	if c.leading.Swap(false) && why != "" {
		c.log.Info("rollout controller stands by", "reason", why)
	}
}

// reconcileAll moves every active rollout on by one step.
func (c *Controller) reconcileAll(ctx context.Context) error {
	if f := c.fence.Load(); f != c.runsFence {
		// The lease changed hands since runs were read: read again.
		clear(c.runs)
		c.runsFence, c.lastResync, c.newest = f, time.Time{}, ""
	}
	now := c.cfg.Now()
	full := now.Sub(c.lastResync) >= c.cfg.Resync
	c.mu.Lock()
	dirty := c.dirty
	c.dirty = map[string]struct{}{}
	c.mu.Unlock()

	failed := false
	defer func() {
		if failed { // the notices are looked at again on the next tick
			c.mu.Lock()
			maps.Copy(c.dirty, dirty)
			c.mu.Unlock()
		}
	}()
	ids, err := c.activeIDs(ctx, full)
	if err != nil {
		failed = true
		return err
	}
	for _, id := range ids {
		if err := c.reconcile(ctx, id, dirty, full); err != nil {
			failed = true
			if errors.Is(err, store.ErrFenced) || ctx.Err() != nil {
				return err
			}
			c.log.WarnContext(ctx, "rollout step failed; trying again", "rollout", id, "err", err)
		}
	}
	if full && !failed {
		c.lastResync = now
	}
	return nil
}

// activeIDs lists the rollouts to look at: those already followed, those
// created since the last look (ids grow with time, so the newest pages are
// read until one already seen), and on a full pass every rollout.
func (c *Controller) activeIDs(ctx context.Context, full bool) ([]string, error) {
	const page = 10
	seen := map[string]bool{}
	var out []string
	for id := range c.runs {
		seen[id] = true
		out = append(out, id)
	}
	before, top := "", ""
	for {
		list, err := c.cfg.Rollouts.ListRollouts(ctx, before, page)
		if err != nil {
			return nil, fmt.Errorf("list rollouts: %w", err)
		}
		if len(list) > 0 && top == "" {
			top = list[0].ID
		}
		for _, r := range list {
			if !Ended(r) && !seen[r.ID] {
				seen[r.ID] = true
				out = append(out, r.ID)
			}
		}
		if len(list) < page || !full && list[len(list)-1].ID <= c.newest {
			break
		}
		before = list[len(list)-1].ID
	}
	c.newest = max(c.newest, top)
	slices.Sort(out)
	return out, nil
}

func setBy(id string) string { return "rollout/" + id }

// reconcile moves one rollout on.
func (c *Controller) reconcile(ctx context.Context, id string, dirty map[string]struct{}, full bool) error {
	r, err := c.cfg.Rollouts.GetRollout(ctx, id)
	if err != nil {
		return fmt.Errorf("read rollout: %w", err)
	}
	if Ended(r) {
		delete(c.runs, id)
		return nil
	}
	rn, err := c.load(ctx, r)
	if err != nil {
		return err
	}
	before := r
	r.Waves = slices.Clone(r.Waves) // before keeps the stored waves, to tell what changed
	now := c.cfg.Now().UTC()

	if r.StartedAt.IsZero() {
		switch {
		case r.State == StateCanceled:
			return c.finish(ctx, &r, rn, before, now)
		case r.State == StatePaused || now.Before(r.Spec.StartAt):
			return nil
		}
		return c.start(ctx, &r, rn, before, now)
	}

	if err := c.observeAll(ctx, &r, rn, dirty, full, now); err != nil {
		return err
	}
	c.tally(&r, rn)
	if r.State == StateRunning || r.State == StatePaused {
		c.checkAbort(&r)
	}
	if r.State == StateAborted || r.State == StateCanceled {
		return c.finish(ctx, &r, rn, before, now)
	}
	c.advance(&r, rn, now)
	if r.State == StateRunning {
		if err := c.dispatch(ctx, &r, rn, now); err != nil {
			return err
		}
		c.tally(&r, rn)
		c.complete(&r, now)
	}
	return c.save(ctx, &r, rn, before, now)
}

// load returns what the controller holds about a rollout, reading its
// executions from the store the first time. An execution that was being
// handed to its device when the previous controller stopped is settled
// from the device: it keeps the job if the device got it (as give would
// find), and goes back to PENDING otherwise. Left PENDING, a device that
// got the job would be CANCELED, and not rolled back, by a cancel or an
// abort that comes before dispatch looks again (while paused, say).
func (c *Controller) load(ctx context.Context, r store.Rollout) (*run, error) {
	if rn, ok := c.runs[r.ID]; ok {
		return rn, nil
	}
	execs, err := c.cfg.Rollouts.ListExecutions(ctx, r.ID)
	if err != nil {
		return nil, fmt.Errorf("read executions: %w", err)
	}
	rn := &run{execs: make(map[string]*store.Execution, len(execs)), changed: map[string]struct{}{}, tokens: 1, seen: map[string]time.Time{}}
	for i := range execs {
		e := &execs[i]
		if e.Status == string(replica.StatusQueued) && e.JobID == "" {
			d, err := c.cfg.Replica.GetDevice(ctx, e.DeviceID)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, fmt.Errorf("read device %s: %w", e.DeviceID, err)
			}
			if err == nil && d.Desired.SetBy == setBy(r.ID) && d.Desired.Bundle == r.Spec.Bundle && d.Desired.Version > e.DesiredVersion {
				e.JobID, e.DesiredVersion = d.Desired.JobID, d.Desired.Version
			} else {
				e.Status = ExecPending
				e.Attempts--
			}
			rn.touch(e.DeviceID)
		}
		rn.execs[e.DeviceID] = e
		rn.order = append(rn.order, e.DeviceID)
	}
	shuffle(r.ID, rn.order)
	slices.SortStableFunc(rn.order, func(a, b string) int { return rn.execs[a].Wave - rn.execs[b].Wave })
	c.runs[r.ID] = rn
	return rn, nil
}

func (c *Controller) notify(event string) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(event)
	}
}

// flush writes the executions that changed.
func (c *Controller) flush(ctx context.Context, id string, rn *run) error {
	if len(rn.changed) == 0 {
		return nil
	}
	execs := make([]store.Execution, 0, len(rn.changed))
	for dev := range rn.changed {
		execs = append(execs, *rn.execs[dev])
	}
	if err := c.cfg.Rollouts.PutExecutions(ctx, id, c.runsFence, execs); err != nil {
		return fmt.Errorf("write executions: %w", err)
	}
	clear(rn.changed)
	return nil
}

// save writes the executions that changed and the rollout, if it changed.
// A conflict with an operator's change is left for the next tick, which
// starts from the stored rollout.
func (c *Controller) save(ctx context.Context, r *store.Rollout, rn *run, before store.Rollout, now time.Time) error {
	if err := c.flush(ctx, r.ID, rn); err != nil {
		return err
	}
	if reflect.DeepEqual(*r, before) {
		return nil
	}
	r.Version, r.UpdatedAt = before.Version+1, now
	_, err := c.cfg.Rollouts.UpdateRollout(ctx, before.Version, *r, c.runsFence)
	if errors.Is(err, store.ErrConflict) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("write rollout: %w", err)
	}
	if Ended(*r) {
		delete(c.runs, r.ID)
	}
	return nil
}
