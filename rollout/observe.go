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
			ids, _, incompatible, err := c.targets(ctx, r.Spec)
			if err != nil {
				return err
			}
			for _, d := range incompatible {
				ids = append(ids, d.ID)
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
		// Waiting for consent (or the device's maintenance window) is not
		// being stuck: that time does not count, and a device that waits
		// is not timed out (its consent policy's max deferral bounds it).
		if inFlight(e.Status) && e.JobID != "" && r.Spec.DeviceTimeout > 0 && e.ConsentSince.IsZero() &&
			now.Sub(e.DispatchedAt)-e.ConsentWaited >= r.Spec.DeviceTimeout {
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
		if !r.Spec.Compatible(d) {
			e = incompatibleExec(r.Spec, d, last, now)
		}
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
		if job.ID == e.JobID {
			waiting := job.Status == string(replica.StatusInProgress) && job.Step == string(replica.StepAwaitingConsent)
			switch {
			case waiting && e.ConsentSince.IsZero():
				e.ConsentSince = now
				rn.touch(d.ID)
			case !waiting && !e.ConsentSince.IsZero():
				e.ConsentWaited += now.Sub(e.ConsentSince)
				e.ConsentSince = time.Time{}
				rn.touch(d.ID)
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
	r.Incompatible = 0
	for i := range r.Waves {
		r.Waves[i].Counts = map[string]uint64{}
		r.Waves[i].Size = 0
		r.Waves[i].Incompatible = 0
	}
	for _, e := range rn.execs {
		if e.Status == ExecIncompatible { // counted apart, outside the waves' sizes
			r.Incompatible++
			if e.Wave < len(r.Waves) {
				r.Waves[e.Wave].Incompatible++
			}
			continue
		}
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
