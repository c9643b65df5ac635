package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferryhq/ferry/inventory"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

// maxDispatch bounds the devices given the job in one tick, so that a tick
// stays short and the lease is renewed in time.
const maxDispatch = 500

// dispatchBatch is how many devices are given the job between two looks at
// the rollout's state.
const dispatchBatch = 50

// start resolves the target set and splits it into waves.
func (c *Controller) start(ctx context.Context, r *store.Rollout, rn *run, before store.Rollout, now time.Time) error {
	ids, missing, incompatible, err := c.targets(ctx, r.Spec)
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
	for _, d := range incompatible {
		planned[d.ID] = true
		rn.execs[d.ID] = incompatibleExec(r.Spec, d, 0, now)
		rn.touch(d.ID)
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

// targets lists the devices of a target set that the bundle's hardware
// list allows, the named devices that do not exist, and the devices the
// hardware list leaves out.
func (c *Controller) targets(ctx context.Context, spec store.RolloutSpec) (ids, missing []string, incompatible []store.Device, err error) {
	if len(spec.Devices) > 0 {
		for _, id := range spec.Devices {
			d, err := c.cfg.Replica.GetDevice(ctx, id)
			switch {
			case errors.Is(err, store.ErrNotFound):
				missing = append(missing, id)
			case err != nil:
				return nil, nil, nil, fmt.Errorf("read device %s: %w", id, err)
			case !spec.Compatible(d):
				incompatible = append(incompatible, d)
			default:
				ids = append(ids, id)
			}
		}
		return ids, missing, incompatible, nil
	}
	q, err := spec.TargetQuery()
	if err != nil {
		return nil, nil, nil, err
	}
	after := ""
	for {
		page, err := c.cfg.Replica.ListQuery(ctx, q, after, 1000)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("list target devices: %w", err)
		}
		for _, d := range page {
			if spec.Compatible(d) {
				ids = append(ids, d.ID)
			} else {
				incompatible = append(incompatible, d)
			}
		}
		if len(page) < 1000 {
			return ids, nil, incompatible, nil
		}
		after = page[len(page)-1].ID
	}
}

// incompatibleExec is the execution of a device left out because the
// bundle's hardware list does not name its hardware.
func incompatibleExec(spec store.RolloutSpec, d store.Device, wave int, now time.Time) *store.Execution {
	return &store.Execution{
		DeviceID: d.ID, Wave: wave, Status: ExecIncompatible, EndedAt: now,
		Message: fmt.Sprintf("bundle is for hardware %s; the device reports %q",
			strings.Join(spec.Hardware, ", "), d.Attributes[inventory.Hardware]),
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
	doc := replica.Document{Bundle: r.Spec.Bundle, Consent: r.Spec.Consent}
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
			e.ConsentSince, e.ConsentWaited = time.Time{}, 0
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
