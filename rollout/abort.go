package rollout

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

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

func stateWord(state string) string {
	if state == StateAborted {
		return "aborted"
	}
	return "canceled"
}
