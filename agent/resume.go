package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"
)

// BootInspector is implemented by an Installer that can tell whether the
// device boots a bundle that was installed and not committed (AB does).
// The agent asks it when it resumes a job a power loss interrupted: a job
// whose install had not switched the boot needs no reboot after its
// rollback, and a job waiting for its health check whose bundle the device
// does not boot (a boot loader fell back) is not confirmed.
type BootInspector interface {
	Uncommitted(ctx context.Context) (bool, error)
}

// uncommitted asks the installer whether the device boots an uncommitted
// bundle; known is false when it cannot tell.
func (a *Agent) uncommitted(ctx context.Context) (yes, known bool) {
	bi, ok := a.cfg.Installer.(BootInspector)
	if !ok {
		return false, false
	}
	yes, err := bi.Uncommitted(ctx)
	if err != nil {
		a.log.WarnContext(ctx, "cannot tell which bundle the device boots", "err", err)
		return false, false
	}
	return yes, true
}

// resume carries a pending job on from the phase it was saved in, after a
// reboot or a power loss, and ends with its report.
func (a *Agent) resume(ctx context.Context, stream Stream) error {
	pd := a.p.Pending
	if pd.Phase == "" {
		pd.Phase = PhaseInstalled // saved by an older agent before its reboot
	}
	if pd.Phase == PhaseRollingBack && pd.Failure == nil {
		pd.Failure = &Result{JobID: pd.JobID, DesiredVersion: pd.DesiredVersion, Status: StatusFailed, Step: StepInstalling,
			ErrorCode: CodeInstallInterrupted, Message: "the agent stopped while rolling back"}
	}
	d := Delta{JobID: pd.JobID, DesiredVersion: pd.DesiredVersion}
	a.dl = pd.Download
	a.log.InfoContext(ctx, "resuming job", "job", pd.JobID, "version", pd.DesiredVersion, "phase", pd.Phase)
	switch pd.Phase {
	case PhaseInstalling:
		// Stopped during the install or its configuration: the slot may
		// be half written, the boot switched or not, the configuration
		// applied or not. Undo it; reboot when the device may run the new
		// bundle now.
		if err := a.progress(stream, d, StepInstalling, 0); err != nil {
			return err
		}
		switched, known := a.uncommitted(ctx)
		if err := a.toRollBack(ctx, pd, Result{Status: StatusFailed, Step: StepInstalling, ErrorCode: CodeInstallInterrupted,
			Message: "the agent stopped during the install (a power loss or a crash); the install was rolled back"}, switched || !known); err != nil {
			return err
		}
	case PhaseInstalled:
		if err := a.progress(stream, d, StepConfirming, 0); err != nil {
			return err
		}
		if err := a.check(ctx, pd); err != nil {
			return err
		}
	case PhaseCommitting:
		if err := a.progress(stream, d, StepConfirming, 0); err != nil {
			return err
		}
	case PhaseRollingBack:
		if err := a.progress(stream, d, pd.Failure.Step, 0); err != nil {
			return err
		}
	default:
		return fmt.Errorf("pending job %s: unknown phase %q", pd.JobID, pd.Phase)
	}
	if pd.Phase == PhaseCommitting {
		if err := a.cfg.Installer.Commit(ctx, pd.job()); err != nil {
			if err := a.toRollBack(ctx, pd, Result{Status: StatusFailed, Step: StepConfirming, ErrorCode: CodeCommitFailed, Message: err.Error()}, true); err != nil {
				return err
			}
		} else {
			res := Result{JobID: pd.JobID, DesiredVersion: pd.DesiredVersion, Status: StatusSucceeded, State: pd.Next}
			return a.finish(ctx, stream, res, pd.Next.Bundle)
		}
	}
	// PhaseRollingBack.
	reboot := pd.Reboot
	res := a.rolledBack(ctx, pd)
	if err := a.finish(ctx, stream, res, pd.Next.Bundle); err != nil {
		return err
	}
	if !reboot {
		return nil
	}
	// The device may run the bundle just rolled back: reboot into the one
	// it boots now, once ferryd has the report.
	drainCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := stream.Drain(drainCtx); err != nil {
		a.log.WarnContext(ctx, "stream not drained before reboot", "err", err)
	}
	cancel()
	job := Job{ID: pd.JobID, DesiredVersion: pd.DesiredVersion, Bundle: pd.Previous.Bundle, Version: pd.Previous.Version, Config: pd.Previous.Config}
	if err := a.cfg.Rebooter.Reboot(ctx, job); err != nil && !errors.Is(err, ErrRestart) {
		a.log.WarnContext(ctx, "reboot after the rollback failed", "err", err)
		return nil
	}
	return ErrRestart
}

// check runs the health check of a job whose bundle the device booted and
// moves it to PhaseCommitting or PhaseRollingBack.
func (a *Agent) check(ctx context.Context, pd *Pending) error {
	if switched, known := a.uncommitted(ctx); known && !switched {
		return a.toRollBack(ctx, pd, Result{Status: StatusRolledBack, Step: StepConfirming, ErrorCode: CodeNotBooted,
			Message: "the device does not boot the installed bundle (the boot loader fell back)"}, false)
	}
	if err := a.cfg.Health.Check(ctx, pd.job()); err != nil {
		return a.toRollBack(ctx, pd, Result{Status: StatusRolledBack, Step: StepConfirming, ErrorCode: CodeHealthFailed, Message: err.Error()}, true)
	}
	pd.Phase = PhaseCommitting
	return a.save(ctx)
}

// toRollBack saves pd in PhaseRollingBack with the result to report once
// rolled back, and whether to reboot then.
func (a *Agent) toRollBack(ctx context.Context, pd *Pending, failure Result, reboot bool) error {
	failure.JobID, failure.DesiredVersion = pd.JobID, pd.DesiredVersion
	pd.Phase, pd.Failure, pd.Reboot = PhaseRollingBack, &failure, reboot
	return a.save(ctx)
}

// rollBackNow rolls back a job that failed after its install and before
// its reboot, and returns its final result.
func (a *Agent) rollBackNow(ctx context.Context, pd *Pending, failure Result, reboot bool) (Result, error) {
	if err := a.toRollBack(ctx, pd, failure, reboot); err != nil {
		return Result{}, err
	}
	return a.rolledBack(ctx, pd), nil
}

// rolledBack rolls pd back (Installer.Rollback, then the previous
// configuration) and returns the result to report: pd.Failure, or
// rollback.failed when the rollback failed.
func (a *Agent) rolledBack(ctx context.Context, pd *Pending) Result {
	res := *pd.Failure
	res.State = pd.Previous.clone()
	if err := a.cfg.Installer.Rollback(ctx, pd.job()); err != nil {
		res.Status, res.ErrorCode = StatusFailed, CodeRollbackFailed
		res.Message = errors.Join(errors.New(pd.Failure.Message), err).Error()
		res.State = pd.Next.clone()
		return res
	}
	if !maps.Equal(pd.Previous.Config, pd.Next.Config) {
		prev := Job{ID: pd.JobID, DesiredVersion: pd.DesiredVersion, Bundle: pd.Previous.Bundle, Version: pd.Previous.Version, Config: pd.Previous.Config}
		if err := a.cfg.ConfigApplier.Apply(ctx, prev); err != nil {
			a.log.WarnContext(ctx, "restoring the previous configuration failed", "err", err)
		}
	}
	return res
}

// job is the Job a pending job's hooks get.
func (pd *Pending) job() Job {
	return Job{ID: pd.JobID, DesiredVersion: pd.DesiredVersion, Bundle: pd.Next.Bundle, Version: pd.Next.Version, Config: pd.Next.Config}
}

// cleanDownloads removes what a job that ended left in the download
// directory (a crash, or a reboot hook that never returned, can leave a
// bundle behind), keeping only the download of a pending job.
func (a *Agent) cleanDownloads(ctx context.Context) {
	keep := map[string]bool{}
	if pd := a.p.Pending; pd != nil && pd.Next.Bundle != nil {
		keep[pd.Next.Bundle.SHA256+".part"] = true
	}
	removed, err := cleanDir(a.cfg.DownloadDir, keep)
	if len(removed) > 0 {
		a.log.InfoContext(ctx, "removed stale downloads", "files", removed)
	}
	if err != nil {
		a.log.WarnContext(ctx, "cleaning the download directory", "err", err)
	}
}
