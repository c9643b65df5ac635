package rollout

import (
	"cmp"
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

// maxDispatch bounds the devices given the job in one tick, so that a tick
// stays short and the lease is renewed in time.
const maxDispatch = 500

// dispatchBatch is how many devices are given the job between two looks at
// the rollout's state.
const dispatchBatch = 50

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

// start resolves the target set and splits it into waves.
func (c *Controller) start(ctx context.Context, r *store.Rollout, rn *run, before store.Rollout, now time.Time) error {
	ids, missing, err := c.targets(ctx, r.Spec)
	if err != nil {
		return err
	}
	shuffle(r.ID, ids)
	rn.order = rn.order[:0] // a start that could not be saved is done again
	sizes := waveSizes(r.Spec, uint64(len(ids)))
	r.Waves = make([]store.WaveProgress, len(sizes))
	planned := map[string]bool{}
	i := 0
	for w, size := range sizes {
		r.Waves[w] = store.WaveProgress{Size: size, State: WavePending}
		for range size {
			id := ids[i]
			i++
			planned[id] = true
			rn.execs[id] = &store.Execution{DeviceID: id, Wave: w, Status: ExecPending}
			rn.order = append(rn.order, id)
			rn.touch(id)
		}
	}
	for _, id := range missing {
		planned[id] = true
		rn.execs[id] = &store.Execution{DeviceID: id, Status: ExecCanceled, Message: "no such device", EndedAt: now}
		rn.touch(id)
	}
	// A plan that was written in part before a crash may name devices
	// that no longer match: they are not part of the rollout.
	for id, e := range rn.execs {
		if !planned[id] {
			e.Status, e.Message, e.EndedAt = ExecCanceled, "no longer targeted", now
			rn.touch(id)
		}
	}
	r.State, r.StartedAt, r.Wave = StateRunning, now, 0
	c.tally(r, rn)
	c.log.InfoContext(ctx, "rollout started", "rollout", r.ID, "devices", len(ids), "waves", len(sizes))
	c.advance(r, rn, now)
	c.complete(r, now)
	return c.save(ctx, r, rn, before, now)
}

// targets lists the devices of a target set, and the named devices that do
// not exist.
func (c *Controller) targets(ctx context.Context, spec store.RolloutSpec) (ids, missing []string, err error) {
	if len(spec.Devices) > 0 {
		for _, id := range spec.Devices {
			if _, err := c.cfg.Replica.GetDevice(ctx, id); errors.Is(err, store.ErrNotFound) {
				missing = append(missing, id)
			} else if err != nil {
				return nil, nil, fmt.Errorf("read device %s: %w", id, err)
			} else {
				ids = append(ids, id)
			}
		}
		return ids, missing, nil
	}
	after := ""
	for {
		page, err := c.cfg.Replica.ListQuery(ctx, store.Query{Labels: spec.Labels}, after, 1000)
		if err != nil {
			return nil, nil, fmt.Errorf("list target devices: %w", err)
		}
		for _, d := range page {
			ids = append(ids, d.ID)
		}
		if len(page) < 1000 {
			return ids, nil, nil
		}
		after = page[len(page)-1].ID
	}
}

// observeAll brings executions up to date with their devices: those that
// changed since the last tick, or all of them on a full pass. On a full
// pass of a continuous rollout it also looks for devices that joined.
func (c *Controller) observeAll(ctx context.Context, r *store.Rollout, rn *run, dirty map[string]struct{}, full bool, now time.Time) error {
	look := func(id string) error {
		d, err := c.cfg.Replica.GetDevice(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			if e := rn.execs[id]; e != nil && !terminal(e.Status) {
				e.Status, e.Message, e.EndedAt = ExecCanceled, "device removed", now
				rn.touch(id)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read device %s: %w", id, err)
		}
		c.observe(r, rn, d, now)
		return nil
	}
	if full {
		for _, id := range rn.order {
			if e := rn.execs[id]; inFlight(e.Status) || e.Status == string(replica.StatusSucceeded) && c.watching(r, e) {
				if err := look(id); err != nil {
					return err
				}
			}
		}
		if r.Spec.Continuous {
			ids, _, err := c.targets(ctx, r.Spec)
			if err != nil {
				return err
			}
			for _, id := range ids {
				if rn.execs[id] == nil {
					if err := look(id); err != nil {
						return err
					}
				}
			}
		}
	} else {
		for id := range dirty {
			e := rn.execs[id]
			if e == nil && r.Spec.Continuous || e != nil && (inFlight(e.Status) || e.Status == string(replica.StatusSucceeded) && c.watching(r, e)) {
				if err := look(id); err != nil {
					return err
				}
			}
		}
	}
	// Timeouts and retries.
	for _, id := range rn.order {
		e := rn.execs[id]
		if inFlight(e.Status) && e.JobID != "" && r.Spec.DeviceTimeout > 0 && now.Sub(e.DispatchedAt) >= r.Spec.DeviceTimeout {
			e.Status, e.EndedAt = string(replica.StatusTimedOut), now
			e.Message = fmt.Sprintf("no result within %v", r.Spec.DeviceTimeout)
			rn.touch(id)
		}
		if (e.Status == string(replica.StatusFailed) || e.Status == string(replica.StatusTimedOut)) && e.Attempts <= r.Spec.Retries && !e.RolledBack {
			e.Message = fmt.Sprintf("attempt %d ended %s; retrying", e.Attempts, e.Status)
			e.Status, e.LastStatus, e.EndedAt = ExecPending, e.Status, time.Time{}
			rn.touch(id)
		}
	}
	return nil
}

// watching reports whether a succeeded execution is still being watched
// for health: until its wave is done.
func (c *Controller) watching(r *store.Rollout, e *store.Execution) bool {
	return e.Wave < len(r.Waves) && r.Waves[e.Wave].State != WaveDone
}

// observe updates a device's execution from the device's documents, and
// adds a device that joined a continuous rollout.
func (c *Controller) observe(r *store.Rollout, rn *run, d store.Device, now time.Time) {
	e := rn.execs[d.ID]
	if e == nil {
		if !r.Spec.Continuous || !matches(r.Spec, d) {
			return
		}
		last := max(len(r.Waves)-1, 0)
		e = &store.Execution{DeviceID: d.ID, Wave: last, Status: ExecPending}
		rn.execs[d.ID] = e
		rn.order = append(rn.order, d.ID)
		rn.touch(d.ID)
		c.log.Info("device joined rollout", "rollout", r.ID, "device", d.ID)
		return
	}
	rn.seen[d.ID] = d.Reported.LastSeen
	job := d.Reported.Job
	switch {
	case inFlight(e.Status) && e.JobID != "":
		if d.Desired.JobID != e.JobID {
			if d.Desired.SetBy == setBy(r.ID) && d.Desired.Bundle == r.Spec.Bundle && d.Desired.Version > e.DesiredVersion {
				e.JobID, e.DesiredVersion = d.Desired.JobID, d.Desired.Version
				rn.touch(d.ID)
			} else {
				e.Status, e.EndedAt = ExecCanceled, now
				e.Message = "desired state replaced by " + d.Desired.SetBy
				rn.touch(d.ID)
				return
			}
		}
		if job.ID == e.JobID && job.Status != e.Status && job.Status != "" {
			e.Status = job.Status
			e.Message = job.ErrorCode
			if job.Message != "" {
				e.Message = job.Message
			}
			if terminal(e.Status) {
				e.EndedAt = now
			}
			if e.Status == string(replica.StatusSucceeded) {
				e.SucceededAt, e.Message = now, ""
			}
			rn.touch(d.ID)
		}
	case e.Status == string(replica.StatusSucceeded) && c.watching(r, e):
		// Health during the soak: the device must keep running the bundle.
		// One that is back on another (its bootloader fell back, say) has
		// rolled back: that ends its execution, without a retry. A Hello
		// is unsigned, so it can only count against the device: it says it
		// is back on another bundle. A Hello naming no bundle is a device
		// that lost its state; it is sent the job again and its verified
		// state stands.
		if d.Desired.JobID == e.JobID {
			back := d.Reported.Bundle
			if c := d.Reported.Claim; back == r.Spec.Bundle && c != nil && !c.Bundle.IsZero() {
				back = c.Bundle
			}
			if back != r.Spec.Bundle {
				e.Status, e.EndedAt = string(replica.StatusRolledBack), now
				e.Message = "back on " + cmp.Or(back.TargetPath, "no bundle") + " during the soak"
				rn.touch(d.ID)
			}
		}
	}
}

// tally counts the executions into the rollout and its waves.
func (c *Controller) tally(r *store.Rollout, rn *run) {
	r.Counts = map[string]uint64{}
	for i := range r.Waves {
		r.Waves[i].Counts = map[string]uint64{}
		r.Waves[i].Size = 0
	}
	for _, e := range rn.execs {
		r.Counts[e.Status]++
		if e.Status != ExecCanceled || e.Message != "no such device" {
			if e.Wave < len(r.Waves) {
				r.Waves[e.Wave].Counts[e.Status]++
				r.Waves[e.Wave].Size++
			}
		}
	}
	if len(r.Counts) == 0 {
		r.Counts = nil // as the store gives it back, so that saving can tell nothing changed
	}
	for i := range r.Waves {
		if len(r.Waves[i].Counts) == 0 {
			r.Waves[i].Counts = nil
		}
	}
	if r.Spec.Rate != nil {
		r.Rate = currentRate(r.Spec.Rate, r.Counts[string(replica.StatusSucceeded)])
	}
}

// ended are the statuses that count as executions that ended, for abort
// rules.
var ended = []replica.JobStatus{replica.StatusSucceeded, replica.StatusFailed, replica.StatusRejected, replica.StatusTimedOut, replica.StatusRolledBack}

// checkAbort applies the abort rules.
func (c *Controller) checkAbort(r *store.Rollout) {
	var total uint64
	for _, s := range ended {
		total += r.Counts[string(s)]
	}
	for _, rule := range r.Spec.Abort {
		n := r.Counts[rule.Status]
		if total == 0 || total < rule.MinExecutions || float64(n)*100 < rule.Percent*float64(total) {
			continue
		}
		r.State = StateAborted
		r.Reason = fmt.Sprintf("%d of %d executions ended %s (%.1f%%, limit %g%%)", n, total, rule.Status, float64(n)*100/float64(total), rule.Percent)
		r.Rollback = !r.Spec.RollbackBundle.IsZero()
		c.log.Warn("rollout aborted", "rollout", r.ID, "reason", r.Reason, "rollback", r.Rollback)
		c.notify(EventAborted)
		return
	}
}

// advance moves the current wave through RUNNING, SOAKING and DONE, and
// starts the next one unless the rollout is paused.
func (c *Controller) advance(r *store.Rollout, rn *run, now time.Time) {
	for r.Wave < len(r.Waves) {
		w := &r.Waves[r.Wave]
		open := 0
		var lastSuccess time.Time
		for _, e := range rn.execs {
			if e.Wave != r.Wave {
				continue
			}
			if !terminal(e.Status) {
				open++
			}
			if e.Status == string(replica.StatusSucceeded) && e.SucceededAt.After(lastSuccess) {
				lastSuccess = e.SucceededAt
			}
		}
		switch w.State {
		case WavePending:
			if r.State != StateRunning {
				return
			}
			w.State, w.StartedAt = WaveRunning, now
			c.log.Info("wave started", "rollout", r.ID, "wave", r.Wave+1, "devices", w.Size)
		case WaveRunning:
			if open > 0 {
				return
			}
			if r.Spec.Soak > 0 && !lastSuccess.IsZero() {
				w.State, w.SoakUntil = WaveSoaking, lastSuccess.Add(r.Spec.Soak)
				continue
			}
			w.State, w.EndedAt = WaveDone, now
		case WaveSoaking:
			if open > 0 { // a retry
				w.State, w.SoakUntil = WaveRunning, time.Time{}
				return
			}
			if now.Before(w.SoakUntil) {
				return
			}
			if c.silent(r, rn, now) > 0 {
				return // the next tick retries them, or finds the wave done
			}
			w.State, w.EndedAt = WaveDone, now
		case WaveDone:
			if r.Wave == len(r.Waves)-1 || r.State != StateRunning {
				return
			}
			c.log.Info("wave done", "rollout", r.ID, "wave", r.Wave+1, "counts", w.Counts)
			r.Wave++
		}
	}
}

// silent ends, as TIMED_OUT, the executions of the current wave that
// succeeded but whose device was not seen for SilentAfter: a device must
// keep reporting through the soak. It returns how many it ended.
func (c *Controller) silent(r *store.Rollout, rn *run, now time.Time) int {
	n := 0
	for id, e := range rn.execs {
		seen, known := rn.seen[id]
		if e.Wave != r.Wave || e.Status != string(replica.StatusSucceeded) || !known || now.Sub(seen) <= c.cfg.SilentAfter {
			continue
		}
		e.Status, e.EndedAt = string(replica.StatusTimedOut), now
		e.Message = "silent during the soak: last seen " + seen.UTC().Format(time.RFC3339)
		rn.touch(id)
		n++
	}
	return n
}

// complete ends a rollout whose last wave is done, unless it is
// continuous.
func (c *Controller) complete(r *store.Rollout, now time.Time) {
	if r.Spec.Continuous || r.State != StateRunning {
		return
	}
	if n := len(r.Waves); r.Wave == n-1 && r.Waves[n-1].State == WaveDone {
		r.State, r.EndedAt, r.Reason = StateCompleted, now, ""
		if len(r.Counts) == 0 {
			r.Reason = "no device matches the target set"
		}
		c.log.Info("rollout completed", "rollout", r.ID, "counts", r.Counts)
	}
}

// dispatch gives the job to as many pending devices of the waves started so
// far as the strategy allows now.
func (c *Controller) dispatch(ctx context.Context, r *store.Rollout, rn *run, now time.Time) error {
	if !inWindow(r.Spec, now) {
		return nil
	}
	budget := maxDispatch
	if m := r.Spec.MaxInFlight; m > 0 {
		var busy uint64
		for _, e := range rn.execs {
			if inFlight(e.Status) {
				busy++
			}
		}
		if busy >= m {
			return nil
		}
		budget = int(min(uint64(budget), m-busy))
	}
	if r.Spec.Rate != nil {
		if !rn.last.IsZero() {
			rn.tokens += r.Rate * now.Sub(rn.last).Minutes()
		}
		rn.last = now
		rn.tokens = min(rn.tokens, max(1, r.Rate/6), maxDispatch) // at most ten seconds' worth at once
		budget = min(budget, int(max(rn.tokens, 0)))
	}
	var picked []*store.Execution
	for _, id := range rn.order {
		if len(picked) >= budget {
			break
		}
		if e := rn.execs[id]; e.Status == ExecPending && e.Wave <= r.Wave {
			picked = append(picked, e)
		}
	}
	doc := replica.Document{Bundle: r.Spec.Bundle}
	undo := func(batch []*store.Execution) { // not given: pending again
		for _, e := range batch {
			e.Status, e.Attempts = ExecPending, e.Attempts-1
			rn.touch(e.DeviceID)
		}
	}
	for batch := range slices.Chunk(picked, dispatchBatch) {
		// Record the intent first, so that a controller that takes over
		// knows these devices may have been given the job.
		for _, e := range batch {
			e.Status, e.JobID, e.DispatchedAt = string(replica.StatusQueued), "", now
			e.Attempts++
			rn.touch(e.DeviceID)
		}
		if err := c.flush(ctx, r.ID, rn); err != nil {
			return err
		}
		// An operator may have paused or cancelled since the tick began:
		// look again before every batch, so that a pause or cancel the
		// operator was answered stops the dispatch but for the devices of
		// the batch under way.
		if cur, err := c.cfg.Rollouts.GetRollout(ctx, r.ID); err != nil || cur.State != StateRunning {
			undo(batch)
			if err != nil {
				err = fmt.Errorf("read rollout: %w", err)
			}
			return errors.Join(err, c.flush(ctx, r.ID, rn))
		}
		for i, e := range batch {
			if err := c.give(ctx, r, e, doc, now); err != nil {
				undo(batch[i:])
				return errors.Join(err, c.flush(ctx, r.ID, rn))
			}
			rn.touch(e.DeviceID) // the job given, or what give found instead
			rn.tokens--
		}
		if err := c.flush(ctx, r.ID, rn); err != nil {
			return err
		}
	}
	return nil
}

// give hands one device the job, unless it already has it from this
// rollout (a previous controller got that far) or already runs the bundle.
func (c *Controller) give(ctx context.Context, r *store.Rollout, e *store.Execution, doc replica.Document, now time.Time) error {
	d, err := c.cfg.Replica.GetDevice(ctx, e.DeviceID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		e.Status, e.Message, e.EndedAt = ExecCanceled, "device removed", now
		return nil
	case err != nil:
		return fmt.Errorf("read device %s: %w", e.DeviceID, err)
	case d.Desired.SetBy == setBy(r.ID) && d.Desired.Bundle == r.Spec.Bundle && d.Desired.Version > e.DesiredVersion:
		e.JobID, e.DesiredVersion = d.Desired.JobID, d.Desired.Version
		return nil
	case d.Reported.Bundle == r.Spec.Bundle && d.Reported.Claim == nil &&
		(d.Desired.Bundle.IsZero() || d.Desired.Bundle == r.Spec.Bundle) && e.Attempts == 1:
		// Its accepted reports say it runs the bundle, and its latest
		// Hello does not say otherwise.
		e.Status, e.Message = string(replica.StatusSucceeded), "already runs the bundle"
		e.SucceededAt, e.EndedAt = now, now
		return nil
	}
	d, err = c.cfg.Replica.SetDesired(ctx, e.DeviceID, doc, setBy(r.ID), nil)
	switch {
	case errors.Is(err, store.ErrNotFound):
		e.Status, e.Message, e.EndedAt = ExecCanceled, "device removed", now
		return nil
	case err != nil:
		return fmt.Errorf("give %s the job: %w", e.DeviceID, err)
	}
	e.JobID, e.DesiredVersion = d.Desired.JobID, d.Desired.Version
	return nil
}

// finish ends an aborted or canceled rollout: pending devices are
// CANCELED and, if asked, the devices given the job get the rollback
// bundle. Devices working on the job without a rollback finish it.
func (c *Controller) finish(ctx context.Context, r *store.Rollout, rn *run, before store.Rollout, now time.Time) error {
	rollback := r.Rollback && !r.Spec.RollbackBundle.IsZero()
	n := 0
	for _, id := range rn.order {
		e := rn.execs[id]
		if e.Status == ExecPending && e.Attempts > 0 {
			// Waiting for a retry: the device still has the job of its
			// last attempt, which ended as recorded.
			e.Status, e.EndedAt = cmp.Or(e.LastStatus, string(replica.StatusFailed)), now
			rn.touch(id)
		}
		if e.Status == ExecPending {
			e.Status, e.EndedAt, e.Message = ExecCanceled, now, "rollout "+stateWord(r.State)
			rn.touch(id)
			continue
		}
		if !rollback || e.RolledBack || e.JobID == "" {
			continue
		}
		switch replica.JobStatus(e.Status) {
		case replica.StatusSucceeded, replica.StatusQueued, replica.StatusInProgress, replica.StatusTimedOut:
		default:
			continue // FAILED, REJECTED, ROLLED_BACK, CANCELED: the device did not move
		}
		if err := c.rollBack(ctx, r, e, now); err != nil {
			return errors.Join(err, c.flush(ctx, r.ID, rn))
		}
		rn.touch(id)
		if n++; n%100 == 0 {
			if err := c.flush(ctx, r.ID, rn); err != nil {
				return err
			}
		}
	}
	if n > 0 {
		c.log.InfoContext(ctx, "rollback bundle given", "rollout", r.ID, "devices", n, "bundle", r.Spec.RollbackBundle.TargetPath)
	}
	for i := range r.Waves {
		if w := &r.Waves[i]; w.State != WaveDone {
			w.State, w.SoakUntil = WaveStopped, time.Time{}
			if !w.StartedAt.IsZero() {
				w.EndedAt = now
			}
		}
	}
	c.tally(r, rn)
	r.EndedAt = now
	return c.save(ctx, r, rn, before, now)
}

// rollBack gives one device the rollback bundle, if its desired state is
// still the job this rollout gave it: a device given something else since
// keeps it, and one already given the rollback bundle (by a controller that
// stopped before recording it) is not given it twice.
func (c *Controller) rollBack(ctx context.Context, r *store.Rollout, e *store.Execution, now time.Time) error {
	by := setBy(r.ID) + "/rollback"
	d, err := c.cfg.Replica.GetDevice(ctx, e.DeviceID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		e.Message = "device removed"
		return nil
	case err != nil:
		return fmt.Errorf("read device %s: %w", e.DeviceID, err)
	case d.Desired.SetBy == by:
		e.RolledBack = true
		return nil
	case d.Desired.JobID != e.JobID:
		e.Message = "not rolled back: desired state replaced by " + d.Desired.SetBy
		return nil
	}
	v := d.Desired.Version
	_, err = c.cfg.Replica.SetDesired(ctx, e.DeviceID, replica.Document{Bundle: r.Spec.RollbackBundle, Forced: true}, by, &v)
	switch {
	case errors.Is(err, store.ErrNotFound):
		e.Message = "device removed"
		return nil
	case errors.Is(err, store.ErrConflict):
		return nil // changed meanwhile: looked at again on the next tick
	case err != nil:
		return fmt.Errorf("give %s the rollback bundle: %w", e.DeviceID, err)
	}
	e.RolledBack = true
	c.notify(EventRolledBack)
	if inFlight(e.Status) {
		e.Status, e.EndedAt, e.Message = ExecCanceled, now, "replaced by the rollback bundle"
	}
	return nil
}

func (c *Controller) notify(event string) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(event)
	}
}

func stateWord(state string) string {
	if state == StateAborted {
		return "aborted"
	}
	return "canceled"
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
