package replica_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
)

const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func newReplica(t *testing.T) *replica.Service {
	t.Helper()
	s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return replica.New(replica.Config{Devices: s, Logger: slog.New(slog.DiscardHandler)})
}

func doc(target string) replica.Document {
	return replica.Document{Bundle: store.Bundle{TargetPath: target, Length: 10, SHA256: sum}}
}

func TestSetDesired(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	if _, err := r.SetDesired(ctx, "dev-1", doc("fw-1.bin"), "op", nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("SetDesired on unknown device = %v, want ErrNotFound", err)
	}
	if _, err := r.Register(ctx, "dev-1", map[string]string{"model": "gw2"}); err != nil {
		t.Fatal(err)
	}
	d1, err := r.SetDesired(ctx, "dev-1", doc("fw-1.bin"), "op", nil)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := r.SetDesired(ctx, "dev-1", doc("fw-2.bin"), "op", nil)
	if err != nil {
		t.Fatal(err)
	}
	if d1.Desired.Version != 1 || d2.Desired.Version != 2 || d1.Desired.JobID == d2.Desired.JobID || d2.Desired.SetBy != "op" {
		t.Errorf("versions %d, %d, jobs %q, %q", d1.Desired.Version, d2.Desired.Version, d1.Desired.JobID, d2.Desired.JobID)
	}
	stale := uint64(1)
	if _, err := r.SetDesired(ctx, "dev-1", doc("fw-3.bin"), "op", &stale); !errors.Is(err, store.ErrConflict) {
		t.Errorf("SetDesired with a stale expected version = %v, want ErrConflict", err)
	}
	cur := uint64(2)
	if d, err := r.SetDesired(ctx, "dev-1", doc("fw-3.bin"), "op", &cur); err != nil || d.Desired.Version != 3 {
		t.Errorf("SetDesired with the current expected version = v%d, %v", d.Desired.Version, err)
	}
}

func TestSetDesiredRefusesBadInput(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	if _, err := r.Register(ctx, "dev-1", nil); err != nil {
		t.Fatal(err)
	}
	good := store.Bundle{TargetPath: "a/fw.bin", Length: 1, SHA256: sum}
	with := func(f func(*store.Bundle)) replica.Document {
		b := good
		f(&b)
		return replica.Document{Bundle: b}
	}
	tests := []struct {
		name, id, field string
		doc             replica.Document
	}{
		{"bad device id", "../x", "device_id", replica.Document{Bundle: good}},
		{"empty document", "dev-1", "document", replica.Document{}},
		{"absolute path", "dev-1", "document.bundle.target_path", with(func(b *store.Bundle) { b.TargetPath = "/etc/passwd" })},
		{"path traversal", "dev-1", "document.bundle.target_path", with(func(b *store.Bundle) { b.TargetPath = "a/../../x" })},
		{"dot element", "dev-1", "document.bundle.target_path", with(func(b *store.Bundle) { b.TargetPath = "./x" })},
		{"control character", "dev-1", "document.bundle.target_path", with(func(b *store.Bundle) { b.TargetPath = "x\n" })},
		{"zero length", "dev-1", "document.bundle.length", with(func(b *store.Bundle) { b.Length = 0 })},
		{"short hash", "dev-1", "document.bundle.sha256", with(func(b *store.Bundle) { b.SHA256 = "abc" })},
		{"upper-case hash", "dev-1", "document.bundle.sha256", with(func(b *store.Bundle) { b.SHA256 = strings.ToUpper(sum) })},
		{"empty config key", "dev-1", "document.config", replica.Document{Config: map[string]string{"": "x"}}},
		{"huge config value", "dev-1", "document.config.k", replica.Document{Config: map[string]string{"k": strings.Repeat("x", 5000)}}},
	}
	for _, tt := range tests {
		_, err := r.SetDesired(ctx, tt.id, tt.doc, "op", nil)
		var ie *replica.InvalidError
		if !errors.As(err, &ie) || ie.Field != tt.field {
			t.Errorf("%s: error %v, want InvalidError on %s", tt.name, err, tt.field)
		}
	}
	d, err := r.GetDevice(ctx, "dev-1")
	if err != nil || d.Desired.Version != 0 {
		t.Errorf("refused writes changed the device: v%d, %v", d.Desired.Version, err)
	}
}

func TestReport(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	if _, err := r.Register(ctx, "dev-1", nil); err != nil {
		t.Fatal(err)
	}
	v1, _ := r.SetDesired(ctx, "dev-1", doc("fw-1.bin"), "op", nil)
	v2, _ := r.SetDesired(ctx, "dev-1", doc("fw-2.bin"), "op", nil)
	job1, job2 := v1.Desired.JobID, v2.Desired.JobID
	ok := func(job string, v uint64) replica.Report {
		return replica.Report{JobID: job, DesiredVersion: v, Status: replica.StatusSucceeded,
			State: replica.State{Bundle: store.Bundle{TargetPath: "fw.bin", Length: 10, SHA256: sum}}}
	}
	with := func(r replica.Report, f func(*replica.Report)) replica.Report {
		f(&r)
		return r
	}
	steps := []struct {
		name           string
		report         replica.Report
		wantAccepted   bool
		wantSuperseded bool
		wantRepeated   bool
		wantCode       replica.RejectCode
		wantReported   uint64 // reported desired version afterwards
	}{
		{"never set", ok("job-x", 3), false, false, false, replica.RejectUnknownVersion, 0},
		{"zero version", ok(job1, 0), false, false, false, replica.RejectInvalid, 0},
		{"not final", replica.Report{JobID: job2, DesiredVersion: 2, Status: replica.StatusInProgress}, false, false, false, replica.RejectInvalid, 0},
		{"wrong job", ok(job1, 2), false, false, false, replica.RejectJobMismatch, 0},
		{"superseded version", ok(job1, 1), true, true, false, 0, 1},
		{"replayed", ok(job1, 1), true, true, true, 0, 1},
		{"current version", ok(job2, 2), true, false, false, 0, 2},
		{"out of order", ok(job1, 1), false, false, false, replica.RejectStale, 2},
		{"repeated", ok(job2, 2), true, false, true, 0, 2},
		{"repeated with another status", with(ok(job2, 2), func(r *replica.Report) { r.Status = replica.StatusRolledBack }),
			false, false, false, replica.RejectStale, 2},
		{"repeated with another bundle", with(ok(job2, 2), func(r *replica.Report) { r.State.Bundle.TargetPath = "fw-9.bin" }),
			false, false, false, replica.RejectStale, 2},
		{"repeated with other configuration", with(ok(job2, 2), func(r *replica.Report) { r.State.Config = map[string]string{"a": "b"} }),
			false, false, false, replica.RejectStale, 2},
	}
	for _, st := range steps {
		before, _ := r.GetDevice(ctx, "dev-1")
		out, err := r.Report(ctx, "dev-1", st.report)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if out.Accepted != st.wantAccepted || out.Superseded != st.wantSuperseded || out.Repeated != st.wantRepeated || out.Code != st.wantCode {
			t.Errorf("%s: outcome %+v; want accepted=%v superseded=%v repeated=%v code=%v", st.name, out,
				st.wantAccepted, st.wantSuperseded, st.wantRepeated, st.wantCode)
		}
		if !out.Accepted && out.Reason == "" {
			t.Errorf("%s: rejected without a reason", st.name)
		}
		d, _ := r.GetDevice(ctx, "dev-1")
		if d.Reported.DesiredVersion != st.wantReported {
			t.Errorf("%s: reported desired version %d, want %d", st.name, d.Reported.DesiredVersion, st.wantReported)
		}
		if (!out.Accepted || out.Repeated) && d.Reported.Version != before.Reported.Version {
			t.Errorf("%s: the reported document moved from v%d to v%d; want unchanged", st.name, before.Reported.Version, d.Reported.Version)
		}
	}
}

func TestProgress(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	r.Register(ctx, "dev-1", nil)
	d, _ := r.SetDesired(ctx, "dev-1", doc("fw-1.bin"), "op", nil)
	job := d.Desired.JobID
	tests := []struct {
		name string
		p    replica.Progress
		want bool
	}{
		{"current job", replica.Progress{JobID: job, DesiredVersion: 1, Step: replica.StepDownloading}, true},
		{"same step again", replica.Progress{JobID: job, DesiredVersion: 1, Step: replica.StepDownloading, Percent: 50}, false},
		{"next step", replica.Progress{JobID: job, DesiredVersion: 1, Step: replica.StepInstalling}, true},
		{"other job", replica.Progress{JobID: "job-x", DesiredVersion: 1, Step: replica.StepRebooting}, false},
		{"other version", replica.Progress{JobID: job, DesiredVersion: 7, Step: replica.StepRebooting}, false},
	}
	for _, tt := range tests {
		got, err := r.Progress(ctx, "dev-1", tt.p)
		if err != nil || got != tt.want {
			t.Errorf("%s: Progress = %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
	cur, _ := r.GetDevice(ctx, "dev-1")
	if cur.Reported.Job.Status != "IN_PROGRESS" || cur.Reported.Job.Step != "INSTALLING" {
		t.Errorf("job after progress: %+v", cur.Reported.Job)
	}
}

// TestProgressDownload follows a job that tries a patch, falls back to the
// full bundle and succeeds: what each Progress records of the download
// method, the bytes and the fallback notice, and that the final report
// keeps them.
func TestProgressDownload(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	r.Register(ctx, "dev-1", nil)
	d, _ := r.SetDesired(ctx, "dev-1", doc("fw-1.bin"), "op", nil)
	job := d.Desired.JobID
	p := func(step replica.Step, m replica.DownloadMethod, bytes uint64, code string) replica.Progress {
		return replica.Progress{JobID: job, DesiredVersion: 1, Step: step, DownloadMethod: m, BytesDownloaded: bytes, Code: code, Message: code}
	}
	type want struct {
		method string
		bytes  uint64
		code   string
	}
	steps := []struct {
		name     string
		p        replica.Progress
		recorded bool
		want     want
	}{
		{"started, method not known", p(replica.StepDownloading, "", 0, ""), true, want{}},
		{"patch chosen", p(replica.StepDownloading, replica.DownloadDelta, 0, ""), true, want{"DELTA", 0, ""}},
		{"patch bytes within the step", p(replica.StepDownloading, replica.DownloadDelta, 500, ""), false, want{"DELTA", 0, ""}},
		{"patch verifying", p(replica.StepVerifying, replica.DownloadDelta, 1000, ""), true, want{"DELTA", 1000, ""}},
		{"fallback notice", p(replica.StepDownloading, replica.DownloadFull, 1000, "delta.fallback"), true, want{"FULL", 1000, "delta.fallback"}},
		{"the same notice again", p(replica.StepDownloading, replica.DownloadFull, 1000, "delta.fallback"), true, want{"FULL", 1000, "delta.fallback"}},
		{"full verifying", p(replica.StepVerifying, replica.DownloadFull, 11000, ""), true, want{"FULL", 11000, ""}},
		{"after a restart, method unsaid", p(replica.StepConfirming, "", 0, ""), true, want{"FULL", 11000, ""}},
	}
	for _, st := range steps {
		got, err := r.Progress(ctx, "dev-1", st.p)
		if err != nil || got != st.recorded {
			t.Errorf("%s: Progress = %v, %v; want %v", st.name, got, err, st.recorded)
		}
		cur, _ := r.GetDevice(ctx, "dev-1")
		j := cur.Reported.Job
		if g := (want{j.DownloadMethod, j.BytesDownloaded, j.ErrorCode}); g != st.want {
			t.Errorf("%s: job %+v, want %+v", st.name, g, st.want)
		}
	}
	events, _ := r.ListEvents(ctx, "dev-1", 0, 100)
	notices := 0
	for _, ev := range events {
		if ev.ErrorCode == "delta.fallback" && ev.Kind == replica.EventJobProgress {
			notices++
		}
	}
	if notices != 2 {
		t.Errorf("%d delta.fallback events in the history, want 2", notices)
	}
	// desired_set and every recorded step but "patch chosen", which only
	// changed the method.
	if len(events) != 7 {
		t.Errorf("%d events in the history, want 7: %+v", len(events), events)
	}
	out, err := r.Report(ctx, "dev-1", replica.Report{JobID: job, DesiredVersion: 1, Status: replica.StatusSucceeded,
		State: replica.State{Bundle: store.Bundle{TargetPath: "fw-1.bin", Length: 10, SHA256: sum}}})
	if err != nil || !out.Accepted {
		t.Fatalf("Report: %+v, %v", out, err)
	}
	if j := out.Device.Reported.Job; j.Status != "SUCCEEDED" || j.DownloadMethod != "FULL" || j.BytesDownloaded != 11000 || j.ErrorCode != "" {
		t.Errorf("job after the report: %+v; want SUCCEEDED, FULL, 11000 bytes, no code", j)
	}

	for _, bad := range []replica.Progress{
		{JobID: job, DesiredVersion: 1, Step: replica.StepDownloading, DownloadMethod: "CARRIER_PIGEON"},
		{JobID: job, DesiredVersion: 1, Step: replica.StepDownloading, Code: strings.Repeat("x", replica.MaxTextBytes+1)},
		{JobID: job, DesiredVersion: 1, Step: replica.StepDownloading, Message: "\xff"},
	} {
		before, _ := r.GetDevice(ctx, "dev-1")
		var inv *replica.InvalidError
		if _, err := r.Progress(ctx, "dev-1", bad); !errors.As(err, &inv) {
			t.Errorf("Progress(%+v) = %v, want an InvalidError", bad, err)
		}
		if after, _ := r.GetDevice(ctx, "dev-1"); after.Reported.Version != before.Reported.Version {
			t.Errorf("a refused Progress changed the device")
		}
	}
}

func TestSubscribe(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	r.Register(ctx, "dev-1", nil)
	r.Register(ctx, "dev-2", nil)
	ch, _, cancel := r.Subscribe(ctx, "dev-1")
	defer cancel()
	other, _, cancelOther := r.Subscribe(ctx, "dev-2")
	defer cancelOther()
	for range 3 { // several changes collapse into one pending signal
		if _, err := r.SetDesired(ctx, "dev-1", doc("fw.bin"), "op", nil); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatal("no change signal")
	}
	select {
	case <-ch:
		t.Error("second signal pending after one read")
	case <-other:
		t.Error("dev-2 was told of dev-1's change")
	default:
	}
}

func TestChangedFields(t *testing.T) {
	b1 := store.Bundle{TargetPath: "a", Length: 1, SHA256: sum}
	b2 := store.Bundle{TargetPath: "b", Length: 1, SHA256: sum}
	tests := []struct {
		name string
		d    store.Desired
		r    store.Reported
		want []string
	}{
		{"nothing", store.Desired{Bundle: b1}, store.Reported{Bundle: b1}, nil},
		{"bundle", store.Desired{Bundle: b2}, store.Reported{Bundle: b1}, []string{"bundle"}},
		{"forced", store.Desired{Bundle: b1, Forced: true}, store.Reported{Bundle: b1}, []string{"forced"}},
		{"config", store.Desired{Config: map[string]string{"a": "1", "b": "2", "c": "3"}},
			store.Reported{Bundle: b1, Config: map[string]string{"a": "1", "b": "9"}}, []string{"config.b", "config.c"}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, replica.ChangedFields(tt.d, tt.r)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}
