package replica

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferryhq/ferry/store"
)

// JobStatus is the state of a job execution.
type JobStatus string

// Job states.
const (
	StatusQueued     JobStatus = "QUEUED"
	StatusInProgress JobStatus = "IN_PROGRESS"
	StatusSucceeded  JobStatus = "SUCCEEDED"
	StatusFailed     JobStatus = "FAILED"
	StatusRolledBack JobStatus = "ROLLED_BACK"
	StatusRejected   JobStatus = "REJECTED" // the device refused the job
	StatusCanceled   JobStatus = "CANCELED"
	StatusTimedOut   JobStatus = "TIMED_OUT"
)

// Final reports whether a device may end a job with status s.
func (s JobStatus) Final() bool {
	switch s {
	case StatusSucceeded, StatusFailed, StatusRolledBack, StatusRejected:
		return true
	}
	return false
}

// Step is where an in-progress job is.
type Step string

// Job steps.
const (
	StepDownloading Step = "DOWNLOADING"
	StepVerifying   Step = "VERIFYING"
	StepInstalling  Step = "INSTALLING"
	StepRebooting   Step = "REBOOTING"
	StepConfirming  Step = "CONFIRMING"
)

// DownloadMethod is how a device fetches a job's bundle.
type DownloadMethod string

// Download methods.
const (
	DownloadFull  DownloadMethod = "FULL"  // the full bundle target
	DownloadDelta DownloadMethod = "DELTA" // a signed patch from the bundle the device runs
)

// Report is what a device sends when a job ends.
type Report struct {
	JobID          string
	DesiredVersion uint64
	Status         JobStatus
	Step           Step
	ErrorCode      string
	Message        string
	State          State
	// Signed, when set, is the signed form of this report, stored with it.
	Signed *Signed
}

// Signed is a report's signature as the device sent it, already verified.
type Signed struct {
	Envelope         []byte
	CertificateChain [][]byte
}

func (r Report) attestation() *store.Attestation {
	if r.Signed == nil {
		return nil
	}
	return &store.Attestation{JobID: r.JobID, Envelope: r.Signed.Envelope, CertificateChain: r.Signed.CertificateChain}
}

// RejectCode says why a report was not recorded.
type RejectCode int

// Reasons for rejecting a report.
const (
	// RejectStale: the report answers a desired version older than one
	// already reported, or repeats one (out of order or replayed).
	RejectStale RejectCode = iota + 1
	// RejectUnknownVersion: the report answers a version never set.
	RejectUnknownVersion
	// RejectJobMismatch: the job id does not belong to the desired version.
	RejectJobMismatch
	// RejectInvalid: the report is malformed.
	RejectInvalid
	// RejectUnverified: the report is unsigned where signatures are
	// required, or its signature does not verify.
	RejectUnverified
)

// Outcome is the replica's answer to a report.
type Outcome struct {
	// Accepted is true when the report was recorded.
	Accepted bool
	// Superseded is true when an accepted report answered a desired version
	// that had already been replaced; the device should get the newest Delta.
	Superseded bool
	// Repeated is true when an accepted report repeats the one already
	// recorded for its job (SUCCEEDED, same bundle and configuration), as a
	// device that lost its state and installed again sends it: it is
	// acknowledged and recorded once.
	Repeated bool
	// Code and Reason say why a report was rejected.
	Code   RejectCode
	Reason string
	// Device is the device after the report (or as it stands, if rejected).
	Device store.Device
}

// Report records a device's report of how a job ended. A report that cannot
// be recorded is not an error: it gets an Outcome with Accepted false, and
// nothing changes. A repeat of the report already recorded for a job is
// accepted and changes nothing, except that it drops a claim the device's
// Hello made since (see Connect). Errors are the store's.
func (s *Service) Report(ctx context.Context, id string, r Report) (Outcome, error) {
	if reason := r.check(); reason != "" {
		cur, err := s.devices.GetDevice(ctx, id)
		return Outcome{Code: RejectInvalid, Reason: reason, Device: cur}, err
	}
	var out Outcome
	dev, err := s.updateReported(ctx, id, func(cur store.Device) (store.Reported, store.Write, error) {
		out = s.judge(cur, r)
		switch {
		case !out.Accepted:
			return store.Reported{}, store.Write{}, errRejected
		case out.Repeated:
			return s.repeated(id, cur, r)
		}
		next := cur.Reported
		next.DesiredVersion = r.DesiredVersion
		next.Bundle, next.Config = r.State.Bundle, r.State.Config
		next.Signed = r.Signed != nil
		next.Claim = nil // this report is newer than what the Hello said
		next.ReportedAt = s.now().UTC()
		next.LastSeen = next.ReportedAt
		next.Job = store.Job{
			ID:             r.JobID,
			DesiredVersion: r.DesiredVersion,
			Status:         string(r.Status),
			Step:           string(r.Step),
			ErrorCode:      r.ErrorCode,
			Message:        r.Message,
			UpdatedAt:      next.ReportedAt,
		}
		if j := cur.Reported.Job; j.ID == r.JobID && j.DesiredVersion == r.DesiredVersion {
			// What the device's Progress said of its download stays.
			next.Job.DownloadMethod, next.Job.BytesDownloaded = j.DownloadMethod, j.BytesDownloaded
		}
		kind := EventJobEnded
		if out.Superseded {
			kind = EventJobSuperseded
		}
		ev := store.Event{Time: next.ReportedAt, Kind: kind, JobID: r.JobID, DesiredVersion: r.DesiredVersion,
			Status: string(r.Status), Step: string(r.Step), ErrorCode: r.ErrorCode, Message: r.Message, Actor: "device:" + id}
		return next, store.Write{Event: ev, Attestation: r.attestation()}, nil
	})
	out.Device = dev
	switch {
	case errors.Is(err, errRejected):
		s.log.InfoContext(ctx, "report rejected", "device", id, "job", r.JobID, "desired_version", r.DesiredVersion, "reason", out.Reason)
		return out, nil
	case errors.Is(err, errUnchanged) && out.Repeated:
		s.log.InfoContext(ctx, "report repeated", "device", id, "job", r.JobID, "desired_version", r.DesiredVersion)
		return out, nil
	case err != nil:
		return Outcome{}, fmt.Errorf("report of %q: %w", id, err)
	}
	s.changed(ctx, id)
	s.log.InfoContext(ctx, "report accepted", "device", id, "job", r.JobID, "desired_version", r.DesiredVersion,
		"status", r.Status, "superseded", out.Superseded, "repeated", out.Repeated)
	return out, nil
}

// repeated is the write for a repeated report: nothing, unless the device's
// Hello claimed another state since, which this report disproves.
func (s *Service) repeated(id string, cur store.Device, r Report) (store.Reported, store.Write, error) {
	if cur.Reported.Claim == nil {
		return store.Reported{}, store.Write{}, errUnchanged
	}
	next := cur.Reported
	next.Claim = nil
	next.LastSeen = s.now().UTC()
	ev := store.Event{Time: next.LastSeen, Kind: EventJobRepeated, JobID: r.JobID, DesiredVersion: r.DesiredVersion,
		Status: string(r.Status), Actor: "device:" + id, Message: "the device reported this job again; its Hello's claim is dropped"}
	return next, store.Write{Event: ev}, nil
}

var errRejected = errors.New("report rejected")

// check validates a report on its own; it returns why it is malformed.
func (r Report) check() string {
	if r.DesiredVersion == 0 {
		return "desired_version must be positive"
	}
	if r.JobID == "" {
		return "job_id is required"
	}
	if !r.Status.Final() {
		return fmt.Sprintf("status %q does not end a job; send Progress for steps", r.Status)
	}
	for _, f := range []struct{ name, v string }{
		{"job_id", r.JobID}, {"error_code", r.ErrorCode}, {"message", r.Message}, {"step", string(r.Step)},
	} {
		if err := validateText(f.name, f.v); err != nil {
			return err.Error()
		}
	}
	if err := r.State.validate("reported"); err != nil {
		return err.Error()
	}
	return ""
}

// judge decides whether a well-formed report may be recorded on cur.
func (s *Service) judge(cur store.Device, r Report) Outcome {
	d, rep := cur.Desired, cur.Reported
	switch {
	case r.DesiredVersion > d.Version:
		return Outcome{Code: RejectUnknownVersion, Reason: fmt.Sprintf("desired version %d was never set; current is %d", r.DesiredVersion, d.Version)}
	case r.repeats(rep):
		return Outcome{Accepted: true, Repeated: true, Superseded: r.DesiredVersion < d.Version}
	case r.DesiredVersion <= rep.DesiredVersion:
		// Reported.DesiredVersion moves only with final reports, so this
		// report is out of order or a replay.
		return Outcome{Code: RejectStale, Reason: fmt.Sprintf("a report for desired version %d is already recorded", rep.DesiredVersion)}
	case r.DesiredVersion == d.Version && r.JobID != d.JobID:
		return Outcome{Code: RejectJobMismatch, Reason: fmt.Sprintf("job %q does not carry desired version %d", r.JobID, d.Version)}
	}
	return Outcome{Accepted: true, Superseded: r.DesiredVersion < d.Version}
}

// repeats reports whether r says again what rep already records: the same
// job, SUCCEEDED, the same bundle and configuration. Any other report on a
// version already answered is stale: a job ends once.
func (r Report) repeats(rep store.Reported) bool {
	j := rep.Job
	return r.Status == StatusSucceeded && j.Status == string(StatusSucceeded) &&
		r.DesiredVersion == rep.DesiredVersion && r.DesiredVersion == j.DesiredVersion && r.JobID == j.ID &&
		r.State.matches(rep.Bundle, rep.Config)
}

// Progress is what a device sends as a job moves through its steps.
type Progress struct {
	JobID          string
	DesiredVersion uint64
	Step           Step
	Percent        uint32
	// DownloadMethod and BytesDownloaded say how the device fetches the
	// bundle and how many bytes it received so far (empty and zero: not
	// said; what an earlier Progress said stays).
	DownloadMethod  DownloadMethod
	BytesDownloaded uint64
	// Code and Message are a notice that does not end the job (for example
	// "delta.fallback"); a Progress with a code is recorded in the history
	// even when its step is unchanged.
	Code, Message string
	// Consent is the answer the device got when it asked for consent (with
	// StepAwaitingConsent); it is recorded in the history as its own
	// entry, with who answered and when.
	Consent *Consent
}

// Progress records that a device's current job reached a step, changed its
// download method (on the job only, without a history entry), or met a
// notice (Code). Progress for a job that is not
// the current one changes nothing and reports false, and so does a Progress
// that only moves the percent or the bytes within a step (they are recorded
// with the next step).
func (s *Service) Progress(ctx context.Context, id string, p Progress) (bool, error) {
	for _, f := range []struct{ name, v string }{{"job_id", p.JobID}, {"code", p.Code}, {"message", p.Message}} {
		if err := validateText(f.name, f.v); err != nil {
			return false, err
		}
	}
	if p.Percent > 100 {
		return false, invalid("percent", "must be at most 100")
	}
	if p.Consent != nil {
		if err := p.Consent.validate(); err != nil {
			return false, err
		}
	}
	switch p.DownloadMethod {
	case "", DownloadFull, DownloadDelta:
	default:
		return false, invalid("download_method", "unknown method %q", p.DownloadMethod)
	}
	recorded := false
	_, err := s.updateReported(ctx, id, func(cur store.Device) (store.Reported, store.Write, error) {
		if p.DesiredVersion != cur.Desired.Version || p.JobID != cur.Desired.JobID || cur.Reported.DesiredVersion >= p.DesiredVersion {
			return store.Reported{}, store.Write{}, errRejected
		}
		j := cur.Reported.Job
		same := j.ID == p.JobID && j.DesiredVersion == p.DesiredVersion && j.Status == string(StatusInProgress)
		if same && j.Step == string(p.Step) && p.Code == "" && p.Consent == nil && (p.DownloadMethod == "" || string(p.DownloadMethod) == j.DownloadMethod) {
			return store.Reported{}, store.Write{}, errRejected // already there; percent and bytes wait for the next step
		}
		next := cur.Reported
		next.Job = store.Job{
			ID:              p.JobID,
			DesiredVersion:  p.DesiredVersion,
			Status:          string(StatusInProgress),
			Step:            string(p.Step),
			ErrorCode:       p.Code,
			Message:         p.Message,
			UpdatedAt:       s.now().UTC(),
			DownloadMethod:  string(p.DownloadMethod),
			BytesDownloaded: p.BytesDownloaded,
		}
		if j.ID == p.JobID && j.DesiredVersion == p.DesiredVersion {
			if p.DownloadMethod == "" {
				next.Job.DownloadMethod = j.DownloadMethod
			}
			next.Job.BytesDownloaded = max(next.Job.BytesDownloaded, j.BytesDownloaded)
		}
		recorded = true
		ev := store.Event{Time: next.Job.UpdatedAt, Kind: EventJobProgress, JobID: p.JobID, DesiredVersion: p.DesiredVersion,
			Status: string(StatusInProgress), Step: string(p.Step), ErrorCode: p.Code, Message: p.Message, Actor: "device:" + id}
		if p.Consent != nil {
			ev.Kind, ev.Message = EventJobConsent, p.Consent.describe()
			if p.Message != "" {
				ev.Message += ": " + p.Message
			}
			next.Job.Message = ev.Message
		} else if same && j.Step == string(p.Step) && p.Code == "" {
			ev = store.Event{} // only the download method changed: the job says it, the history needs no entry
		}
		return next, store.Write{Event: ev}, nil
	})
	if errors.Is(err, errRejected) {
		return false, nil
	}
	if err == nil && recorded {
		s.changed(ctx, id)
	}
	return recorded, err
}
