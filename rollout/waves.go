package rollout

import (
	"time"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

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
		switch {
		case len(r.Counts) == 0 && r.Incompatible > 0:
			r.Reason = "every device of the target set is incompatible with the bundle's hardware"
		case len(r.Counts) == 0:
			r.Reason = "no device matches the target set"
		}
		c.log.Info("rollout completed", "rollout", r.ID, "counts", r.Counts)
	}
}
