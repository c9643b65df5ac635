package server

import (
	"time"

	"github.com/ferryhq/ferry/attest"
	"google.golang.org/protobuf/types/known/timestamppb"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

// Conversions between protocol messages and domain types. The domain keeps
// job statuses and steps as the enum names without their prefix.

func bundleFromProto(b *devicev1.Bundle) store.Bundle {
	if b == nil {
		return store.Bundle{}
	}
	return store.Bundle{TargetPath: b.GetTargetPath(), Length: b.GetLength(), SHA256: b.GetSha256()}
}

func bundleToProto(b store.Bundle) *devicev1.Bundle {
	if b.IsZero() {
		return nil
	}
	return &devicev1.Bundle{TargetPath: b.TargetPath, Length: b.Length, Sha256: b.SHA256}
}

func documentFromProto(d *devicev1.DesiredDocument) replica.Document {
	return replica.Document{Bundle: bundleFromProto(d.GetBundle()), Forced: d.GetForced(), Config: d.GetConfig(), Consent: consentPolicyFromProto(d.GetConsent())}
}

func documentToProto(d store.Desired) *devicev1.DesiredDocument {
	return &devicev1.DesiredDocument{Bundle: bundleToProto(d.Bundle), Forced: d.Forced, Config: d.Config, Consent: consentPolicyToProto(d.Consent)}
}

func stateFromProto(s *devicev1.ReportedState) replica.State {
	return replica.State{Bundle: bundleFromProto(s.GetBundle()), Config: s.GetConfig()}
}

func stateToProto(b store.Bundle, config map[string]string) *devicev1.ReportedState {
	return &devicev1.ReportedState{Bundle: bundleToProto(b), Config: config}
}

func statusFromProto(s devicev1.JobStatus) replica.JobStatus {
	if s == devicev1.JobStatus_JOB_STATUS_UNSPECIFIED {
		return ""
	}
	return replica.JobStatus(trimPrefix(s.String(), "JOB_STATUS_"))
}

func statusToProto(s string) devicev1.JobStatus {
	return devicev1.JobStatus(devicev1.JobStatus_value["JOB_STATUS_"+s])
}

func stepFromProto(s devicev1.Step) replica.Step {
	if s == devicev1.Step_STEP_UNSPECIFIED {
		return ""
	}
	return replica.Step(trimPrefix(s.String(), "STEP_"))
}

func stepToProto(s string) devicev1.Step {
	return devicev1.Step(devicev1.Step_value["STEP_"+s])
}

func progressFromProto(p *devicev1.Progress) replica.Progress {
	return replica.Progress{
		JobID: p.GetJobId(), DesiredVersion: p.GetDesiredVersion(), Step: stepFromProto(p.GetStep()), Percent: p.GetPercent(),
		DownloadMethod: downloadMethodFromProto(p.GetDownloadMethod()), BytesDownloaded: p.GetBytesDownloaded(),
		Code: p.GetCode(), Message: p.GetMessage(), Consent: consentFromProto(p.GetConsent()),
	}
}

func downloadMethodFromProto(m devicev1.DownloadMethod) replica.DownloadMethod {
	if m == devicev1.DownloadMethod_DOWNLOAD_METHOD_UNSPECIFIED {
		return ""
	}
	return replica.DownloadMethod(trimPrefix(m.String(), "DOWNLOAD_METHOD_"))
}

func downloadMethodToProto(m string) devicev1.DownloadMethod {
	return devicev1.DownloadMethod(devicev1.DownloadMethod_value["DOWNLOAD_METHOD_"+m])
}

func trimPrefix(s, prefix string) string {
	if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):]
	}
	return s // an enum number this build does not know: String() gives digits
}

func reportFromProto(r *devicev1.Report) replica.Report {
	return replica.Report{
		JobID:          r.GetJobId(),
		DesiredVersion: r.GetDesiredVersion(),
		Status:         statusFromProto(r.GetStatus()),
		Step:           stepFromProto(r.GetStep()),
		ErrorCode:      r.GetErrorCode(),
		Message:        r.GetMessage(),
		State:          stateFromProto(r.GetReported()),
	}
}

// reportFromPredicate takes a report from a verified signed statement.
func reportFromPredicate(p attest.Report) replica.Report {
	r := replica.Report{
		JobID:          p.JobID,
		DesiredVersion: p.DesiredVersion,
		Status:         replica.JobStatus(p.Status),
		Step:           replica.Step(p.Step),
		ErrorCode:      p.ErrorCode,
		Message:        p.Message,
		State:          replica.State{Config: p.Config},
	}
	if b := p.Bundle; b != nil {
		r.State.Bundle = store.Bundle{TargetPath: b.TargetPath, Length: b.Length, SHA256: b.SHA256}
	}
	return r
}

var rejectCodes = map[replica.RejectCode]devicev1.RejectCode{
	replica.RejectUnverified:     devicev1.RejectCode_REJECT_CODE_UNVERIFIED,
	replica.RejectStale:          devicev1.RejectCode_REJECT_CODE_STALE,
	replica.RejectUnknownVersion: devicev1.RejectCode_REJECT_CODE_UNKNOWN_VERSION,
	replica.RejectJobMismatch:    devicev1.RejectCode_REJECT_CODE_JOB_MISMATCH,
	replica.RejectInvalid:        devicev1.RejectCode_REJECT_CODE_INVALID,
}

func deltaToProto(d store.Device) *devicev1.Delta {
	return &devicev1.Delta{
		JobId:          d.Desired.JobID,
		DesiredVersion: d.Desired.Version,
		Desired:        documentToProto(d.Desired),
		ChangedFields:  replica.ChangedFields(d.Desired, d.Reported),
		SetTime:        timestamp(d.Desired.SetAt),
	}
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func deviceToProto(d store.Device) *fleetv1.Device {
	out := &fleetv1.Device{
		Id:           d.ID,
		Labels:       d.Labels,
		Attributes:   d.Attributes,
		CreateTime:   timestamp(d.CreatedAt),
		LastSeenTime: timestamp(d.Reported.LastSeen),
		Desired: &fleetv1.DesiredState{
			Version: d.Desired.Version,
			JobId:   d.Desired.JobID,
			SetBy:   d.Desired.SetBy,
			SetTime: timestamp(d.Desired.SetAt),
		},
		Reported: &fleetv1.ReportedState{
			Version:        d.Reported.Version,
			DesiredVersion: d.Reported.DesiredVersion,
			State:          stateToProto(d.Reported.Bundle, d.Reported.Config),
			AgentVersion:   d.Reported.AgentVersion,
			ReportTime:     timestamp(d.Reported.ReportedAt),
			Signed:         d.Reported.Signed,
		},
	}
	if c := d.Reported.Claim; c != nil {
		out.Claim = &fleetv1.DeviceClaim{
			State:                     stateToProto(c.Bundle, c.Config),
			LastAppliedDesiredVersion: c.LastApplied,
			ClaimTime:                 timestamp(c.At),
		}
	}
	if d.Desired.Version > 0 {
		out.Desired.Document = documentToProto(d.Desired)
	}
	switch j := d.Reported.Job; {
	case d.Desired.Version > 0 && d.Desired.Version > j.DesiredVersion:
		// Set, and the device has not started on it yet.
		out.Job = &fleetv1.Job{Id: d.Desired.JobID, DesiredVersion: d.Desired.Version,
			Status: devicev1.JobStatus_JOB_STATUS_QUEUED, UpdateTime: timestamp(d.Desired.SetAt)}
	case j.ID != "":
		out.Job = &fleetv1.Job{
			Id:              j.ID,
			DesiredVersion:  j.DesiredVersion,
			Status:          statusToProto(j.Status),
			Step:            stepToProto(j.Step),
			ErrorCode:       j.ErrorCode,
			Message:         j.Message,
			UpdateTime:      timestamp(j.UpdatedAt),
			DownloadMethod:  downloadMethodToProto(j.DownloadMethod),
			BytesDownloaded: j.BytesDownloaded,
		}
	}
	return out
}

func eventToProto(ev store.Event) *fleetv1.DeviceEvent {
	return &fleetv1.DeviceEvent{
		Time:           timestamp(ev.Time),
		Kind:           ev.Kind,
		JobId:          ev.JobID,
		DesiredVersion: ev.DesiredVersion,
		Status:         statusToProto(ev.Status),
		Step:           stepToProto(ev.Step),
		ErrorCode:      ev.ErrorCode,
		Message:        ev.Message,
		Actor:          ev.Actor,
	}
}
