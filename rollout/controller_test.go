package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

// The controller tests drive a Controller step by step: they take the
// lease with renew, then call reconcileAll after moving a fake clock on.
// With Resync at a nanosecond every step is a full pass, so the
// controller reads every device it follows without change notices. The
// lease itself runs on bolt's (real) clock, with a TTL long enough to
// outlast a test.

var canary = map[string]string{"ring": "canary"}

type harness struct {
	*serviceHarness
	t *testing.T
	c *Controller
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{serviceHarness: newServiceHarness(t), t: t}
	h.c = h.controller("test", time.Minute, time.Nanosecond)
	h.lead(h.c)
	return h
}

func (h *harness) controller(holder string, ttl, resync time.Duration) *Controller {
	return NewController(ControllerConfig{Rollouts: h.db, Leases: h.db, Replica: h.rep, Holder: holder,
		LeaseTTL: ttl, Tick: time.Second, Resync: resync, SilentAfter: 24 * time.Hour, Logger: quiet, Now: h.clk.Now})
}

func (h *harness) lead(c *Controller) {
	h.t.Helper()
	c.renew(h.ctx)
	if !c.Leading() {
		h.t.Fatalf("%s does not lead", c.cfg.Holder)
	}
}

// step moves the clock on by d (at least a millisecond, so that the step
// is a full pass) and the rollouts by one step.
func (h *harness) step(d time.Duration) { h.t.Helper(); h.stepWith(h.c, d) }

func (h *harness) stepWith(c *Controller, d time.Duration) {
	h.t.Helper()
	h.clk.Add(max(d, time.Millisecond))
	if err := c.reconcileAll(h.ctx); err != nil {
		h.t.Fatalf("reconcileAll: %v", err)
	}
}

// fleet registers n devices running the old bundle.
func (h *harness) fleet(prefix string, n int, labels map[string]string) []string {
	h.t.Helper()
	var ids []string
	for i := range n {
		id := fmt.Sprintf("%s-%02d", prefix, i)
		h.register(id, labels, oldBundle)
		ids = append(ids, id)
	}
	return ids
}

// register creates a device that runs runs, as an accepted report of an
// earlier job established, and that connected saying so.
func (h *harness) register(id string, labels map[string]string, runs store.Bundle) {
	h.t.Helper()
	d, err := h.rep.Register(h.ctx, id, labels)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.db.SetReported(h.ctx, id, d.Reported.Version,
		store.Reported{Version: d.Reported.Version + 1, Bundle: runs, Signed: true, ReportedAt: h.clk.Now()}, store.Write{}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.rep.Connect(h.ctx, id, replica.Hello{AgentVersion: "1.0.0", State: replica.State{Bundle: runs}}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) create(spec store.RolloutSpec) string {
	h.t.Helper()
	r, err := h.svc.Create(h.ctx, spec, "operator:test")
	if err != nil {
		h.t.Fatal(err)
	}
	return r.ID
}

func (h *harness) rollout(id string) store.Rollout {
	h.t.Helper()
	r, err := h.db.GetRollout(h.ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	return r
}

// execs returns a rollout's executions as stored, by device id.
func (h *harness) execs(id string) map[string]store.Execution {
	h.t.Helper()
	list, err := h.db.ListExecutions(h.ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]store.Execution{}
	for _, e := range list {
		out[e.DeviceID] = e
	}
	return out
}

// with lists the devices whose stored execution has status, sorted.
func (h *harness) with(id, status string) []string {
	h.t.Helper()
	var out []string
	for dev, e := range h.execs(id) {
		if e.Status == status {
			out = append(out, dev)
		}
	}
	slices.Sort(out)
	return out
}

func (h *harness) device(id string) store.Device {
	h.t.Helper()
	d, err := h.rep.GetDevice(h.ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	return d
}

// answer reports how a device's current job ended, as its agent would.
func (h *harness) answer(dev string, status replica.JobStatus) {
	h.t.Helper()
	d := h.device(dev)
	if d.Desired.JobID == "" {
		h.t.Fatalf("%s has no job to answer", dev)
	}
	runs := oldBundle
	if status == replica.StatusSucceeded {
		runs = d.Desired.Bundle
	}
	out, err := h.rep.Report(h.ctx, dev, replica.Report{JobID: d.Desired.JobID, DesiredVersion: d.Desired.Version,
		Status: status, State: replica.State{Bundle: runs}})
	if err != nil || !out.Accepted {
		h.t.Fatalf("report of %s: %+v, %v", dev, out, err)
	}
}

func (h *harness) answerAll(devs []string, status replica.JobStatus) {
	h.t.Helper()
	for _, d := range devs {
		h.answer(d, status)
	}
}

// given reports whether the device was given the job by rollout id.
func (h *harness) given(dev, id string) bool {
	h.t.Helper()
	d := h.device(dev)
	return d.Desired.SetBy == setBy(id) && d.Desired.Bundle == newBundle
}

func counts(kv ...any) map[string]uint64 {
	out := map[string]uint64{}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i].(string)] = uint64(kv[i+1].(int))
	}
	return out
}

const (
	queued    = string(replica.StatusQueued)
	succeeded = string(replica.StatusSucceeded)
	failed    = string(replica.StatusFailed)
	timedOut  = string(replica.StatusTimedOut)
)

func TestControllerWaves(t *testing.T) {
	h := newHarness(t)
	devs := h.fleet("gw", 10, canary)
	others := h.fleet("st", 2, map[string]string{"ring": "stable"})
	spec := validSpec()
	spec.Waves = []store.WaveSpec{{Percent: 10}, {Percent: 50}, {Percent: 100}}
	spec.MaxInFlight = 2
	id := h.create(spec)

	start := h.clk.Now().Add(time.Second)
	h.step(time.Second)
	r := h.rollout(id)
	if r.State != StateRunning || !r.StartedAt.Equal(start) || r.Wave != 0 {
		t.Fatalf("after the start: state %s, started %v, wave %d", r.State, r.StartedAt, r.Wave)
	}
	var sizes []uint64
	for _, w := range r.Waves {
		sizes = append(sizes, w.Size)
	}
	if diff := cmp.Diff([]uint64{1, 5, 4}, sizes); diff != "" {
		t.Errorf("wave sizes (-want +got):\n%s", diff)
	}
	if got := h.with(id, ExecPending); !slices.Equal(got, devs) {
		t.Errorf("pending after the start: %v, want every target", got)
	}
	waveOf := map[string]int{}
	for dev, e := range h.execs(id) {
		waveOf[dev] = e.Wave
	}

	var order []int // the wave of each device given the job, in order
	seen := map[string]bool{}
	held, maxBusy := false, 0
	for i := 0; r.State == StateRunning; i++ {
		if i == 50 {
			t.Fatalf("not completed after %d steps: %+v", i, r)
		}
		h.step(time.Second)
		r = h.rollout(id)
		busy := h.with(id, queued)
		if len(busy) > 2 {
			t.Fatalf("%d devices at work, max in flight is 2", len(busy))
		}
		maxBusy = max(maxBusy, len(busy))
		if len(busy) == 2 && !held {
			// At the limit, a step gives nobody else the job.
			held = true
			h.step(time.Second)
			if again := h.with(id, queued); !slices.Equal(again, busy) || len(h.with(id, succeeded)) != len(seen) {
				t.Fatalf("at the limit, a step changed the devices at work from %v to %v", busy, again)
			}
		}
		for _, dev := range busy {
			if seen[dev] {
				t.Fatalf("%s given the job twice", dev)
			}
			seen[dev] = true
			if waveOf[dev] != r.Wave {
				t.Errorf("%s of wave %d given the job while wave %d runs", dev, waveOf[dev], r.Wave)
			}
			order = append(order, waveOf[dev])
		}
		h.answerAll(busy, replica.StatusSucceeded)
	}
	if !slices.IsSorted(order) || len(order) != 10 || !held || maxBusy != 2 {
		t.Errorf("waves given the job in order %v (held %v, at most %d at once)", order, held, maxBusy)
	}
	if r.State != StateCompleted || r.EndedAt.IsZero() || r.Wave != 2 {
		t.Errorf("rollout %s (ended %v, wave %d), want COMPLETED", r.State, r.EndedAt, r.Wave)
	}
	if diff := cmp.Diff(counts(succeeded, 10), r.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	for i, w := range r.Waves {
		if w.State != WaveDone || w.StartedAt.IsZero() || w.EndedAt.Before(w.StartedAt) {
			t.Errorf("wave %d: %+v", i, w)
		}
		if i > 0 && w.StartedAt.Before(r.Waves[i-1].EndedAt) {
			t.Errorf("wave %d started at %v, before wave %d ended at %v", i, w.StartedAt, i-1, r.Waves[i-1].EndedAt)
		}
		if diff := cmp.Diff(counts(succeeded, int(sizes[i])), w.Counts); diff != "" {
			t.Errorf("wave %d counts (-want +got):\n%s", i, diff)
		}
	}
	for _, dev := range devs {
		if d := h.device(dev); d.Desired.Version != 1 || d.Desired.SetBy != "rollout/"+id || d.Desired.Bundle != newBundle {
			t.Errorf("%s desired state %+v, want version 1 by the rollout", dev, d.Desired)
		}
	}
	for _, dev := range others {
		if d := h.device(dev); d.Desired.Version != 0 {
			t.Errorf("%s is not targeted but has desired state %+v", dev, d.Desired)
		}
	}
	list, err := h.svc.Executions(h.ctx, id, "", "", 100)
	if err != nil || len(list) != 10 || !slices.IsSortedFunc(list, func(a, b store.Execution) int { return cmpStr(a.DeviceID, b.DeviceID) }) {
		t.Errorf("Executions = %d, %v; want 10 in device order", len(list), err)
	}
	// Pages, and a filter on status.
	for _, tc := range []struct {
		status, after string
		limit, want   int
	}{
		{"", "", 4, 4},
		{"", list[3].DeviceID, 100, 6},
		{succeeded, "", 100, 10},
		{string(replica.StatusFailed), "", 100, 0},
	} {
		got, err := h.svc.Executions(h.ctx, id, tc.status, tc.after, tc.limit)
		if err != nil || len(got) != tc.want || len(got) > 0 && got[0].DeviceID <= tc.after {
			t.Errorf("Executions(%q, after %q, %d) = %d, %v; want %d", tc.status, tc.after, tc.limit, len(got), err, tc.want)
		}
	}
	if _, err := h.svc.Executions(h.ctx, id, "BOGUS", "", 10); err == nil {
		t.Error("Executions with an unknown status: no error")
	}
	// An ended rollout is left alone.
	h.step(time.Minute)
	if again := h.rollout(id); again.Version != r.Version {
		t.Errorf("a completed rollout was written again: version %d, was %d", again.Version, r.Version)
	}
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TestControllerRecordsJobs checks that what the controller learns as it
// hands devices the job reaches the store: job ids, and devices that
// already ran the bundle.
func TestControllerRecordsJobs(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 2, nil)
	h.register("gw-new", nil, newBundle) // already runs the bundle
	spec := validSpec()
	spec.Labels, spec.Devices = nil, []string{"gw-00", "gw-01", "gw-new", "ghost"}
	id := h.create(spec)

	h.step(time.Second) // plan
	ghost := h.execs(id)["ghost"]
	if ghost.Status != ExecCanceled || ghost.Message != "no such device" {
		t.Errorf("execution of a device that does not exist: %+v", ghost)
	}
	if r := h.rollout(id); r.Waves[0].Size != 3 {
		t.Errorf("wave size %d, want 3 (not counting a missing device)", r.Waves[0].Size)
	}

	h.step(time.Second) // dispatch
	now := h.clk.Now()
	execs := h.execs(id)
	for _, dev := range []string{"gw-00", "gw-01"} {
		d, e := h.device(dev), execs[dev]
		want := store.Execution{DeviceID: dev, Status: queued, JobID: d.Desired.JobID, DesiredVersion: d.Desired.Version, Attempts: 1, DispatchedAt: now}
		if diff := cmp.Diff(want, e); diff != "" || d.Desired.JobID == "" {
			t.Errorf("stored execution of %s (-want +got):\n%s", dev, diff)
		}
	}
	if e := execs["gw-new"]; e.Status != succeeded || e.Message != "already runs the bundle" || e.JobID != "" || e.SucceededAt.IsZero() {
		t.Errorf("stored execution of a device already running the bundle: %+v", e)
	}
	if d := h.device("gw-new"); d.Desired.Version != 0 {
		t.Errorf("a device already running the bundle was given a job: %+v", d.Desired)
	}
	if diff := cmp.Diff(counts(queued, 2, succeeded, 1, ExecCanceled, 1), h.rollout(id).Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
}

func TestControllerSoak(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 4, canary)
	spec := validSpec()
	spec.Waves = []store.WaveSpec{{Count: 2}, {Percent: 100}}
	spec.Soak = 10 * time.Minute
	spec.Retries = 1
	id := h.create(spec)
	h.step(time.Second)
	h.step(time.Second)
	first := h.with(id, queued)
	if len(first) != 2 {
		t.Fatalf("first wave at work: %v", first)
	}
	var rest []string
	for dev, e := range h.execs(id) {
		if e.Wave == 1 {
			rest = append(rest, dev)
		}
	}
	a, b := first[0], first[1]
	h.answer(a, replica.StatusSucceeded)
	h.answer(b, replica.StatusRolledBack)
	h.step(time.Second)
	successAt := h.clk.Now()
	r := h.rollout(id)
	if diff := cmp.Diff(counts(succeeded, 1, string(replica.StatusRolledBack), 1, ExecPending, 2), r.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if w := r.Waves[0]; w.State != WaveSoaking || !w.SoakUntil.Equal(successAt.Add(10*time.Minute)) || r.Wave != 0 {
		t.Fatalf("wave 0 after its devices ended: %+v (current wave %d)", w, r.Wave)
	}

	// A device ends a job once: a later ROLLED_BACK for the job it
	// reported SUCCEEDED is refused as stale, and changes nothing.
	d := h.device(a)
	out, err := h.rep.Report(h.ctx, a, replica.Report{JobID: d.Desired.JobID, DesiredVersion: d.Desired.Version,
		Status: replica.StatusRolledBack, State: replica.State{Bundle: oldBundle}})
	if err != nil || out.Accepted || out.Code != replica.RejectStale {
		t.Errorf("ROLLED_BACK after SUCCEEDED: %+v, %v; want rejected as stale", out, err)
	}

	h.step(5 * time.Minute)
	if r := h.rollout(id); r.Waves[0].State != WaveSoaking || r.Wave != 0 || h.execs(id)[a].Status != succeeded {
		t.Fatalf("halfway through the soak: %+v, %s", r.Waves[0], h.execs(id)[a].Status)
	}
	for _, dev := range rest {
		if h.device(dev).Desired.Version != 0 {
			t.Errorf("%s of the next wave given the job during the soak", dev)
		}
	}

	// The device lost its agent state and says it runs nothing: that is no
	// rollback, its signed report stands (it is sent the job again).
	if _, err := h.rep.Connect(h.ctx, a, replica.Hello{}); err != nil {
		t.Fatal(err)
	}
	h.step(time.Second)
	if e := h.execs(id)[a]; e.Status != succeeded {
		t.Errorf("a device that lost its state during the soak: %+v; want it still SUCCEEDED", e)
	}

	// The device comes back on the old bundle: it rolled back, which ends
	// its execution without a retry; the soak goes on.
	if _, err := h.rep.Connect(h.ctx, a, replica.Hello{State: replica.State{Bundle: oldBundle}}); err != nil {
		t.Fatal(err)
	}
	h.step(time.Second)
	e := h.execs(id)[a]
	if e.Status != string(replica.StatusRolledBack) || e.Attempts != 1 || e.JobID != d.Desired.JobID || !strings.Contains(e.Message, "during the soak") {
		t.Errorf("a device that left the bundle during the soak: %+v", e)
	}
	if r := h.rollout(id); r.Waves[0].State != WaveSoaking || !r.Waves[0].SoakUntil.Equal(successAt.Add(10*time.Minute)) {
		t.Errorf("wave 0 after a device rolled back in its soak: %+v", r.Waves[0])
	}
	h.step(successAt.Add(10*time.Minute).Sub(h.clk.Now()) - time.Millisecond)
	if r := h.rollout(id); r.Waves[0].State != WaveSoaking {
		t.Fatalf("wave 0 just before its soak ends: %+v", r.Waves[0])
	}
	h.step(time.Millisecond)
	r = h.rollout(id)
	if r.Waves[0].State != WaveDone || r.Wave != 1 || r.Waves[1].State != WaveRunning {
		t.Fatalf("after the soak: wave %d, %+v", r.Wave, r.Waves)
	}
	if got := h.with(id, queued); !slices.Equal(got, slices.Sorted(slices.Values(rest))) {
		t.Errorf("after the soak, at work: %v, want %v", got, rest)
	}
	h.answerAll(rest, replica.StatusSucceeded)
	h.step(time.Second)
	h.step(10 * time.Minute)
	r = h.rollout(id)
	if r.State != StateCompleted {
		t.Errorf("rollout %s after the last soak, want COMPLETED", r.State)
	}
	if diff := cmp.Diff(counts(succeeded, 2, string(replica.StatusRolledBack), 2), r.Counts); diff != "" {
		t.Errorf("final counts (-want +got):\n%s", diff)
	}
}

func TestControllerTimeoutsAndRetries(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 2, nil)
	spec := validSpec()
	spec.Labels, spec.Devices = nil, []string{"gw-00", "gw-01"}
	spec.DeviceTimeout = 5 * time.Minute
	spec.Retries = 2
	id := h.create(spec)
	h.step(time.Second)
	h.step(time.Second)
	jobs := map[string][]string{}
	job := func(dev string) string { return h.device(dev).Desired.JobID }
	jobs["gw-00"] = append(jobs["gw-00"], job("gw-00"))
	jobs["gw-01"] = append(jobs["gw-01"], job("gw-01"))

	// gw-01 fails once, and succeeds when given the job again.
	h.answer("gw-01", replica.StatusFailed)
	h.step(time.Second)
	if e := h.execs(id)["gw-01"]; e.Status != queued || e.Attempts != 2 || e.JobID != job("gw-01") || e.JobID == jobs["gw-01"][0] {
		t.Errorf("after a failure with retries left: %+v", e)
	}
	h.answer("gw-01", replica.StatusSucceeded)
	h.step(time.Second)

	// gw-00 never answers: it times out three times.
	for attempt := uint32(2); attempt <= 3; attempt++ {
		h.step(5 * time.Minute)
		e := h.execs(id)["gw-00"]
		if e.Status != queued || e.Attempts != attempt || e.JobID != job("gw-00") || slices.Contains(jobs["gw-00"], e.JobID) ||
			!e.DispatchedAt.Equal(h.clk.Now()) {
			t.Fatalf("attempt %d: %+v", attempt, e)
		}
		jobs["gw-00"] = append(jobs["gw-00"], e.JobID)
	}
	h.step(5*time.Minute - time.Millisecond)
	if e := h.execs(id)["gw-00"]; e.Status != queued {
		t.Fatalf("timed out early: %+v", e)
	}
	h.step(time.Millisecond)
	e := h.execs(id)["gw-00"]
	if e.Status != timedOut || e.Attempts != 3 || e.Message != "no result within 5m0s" || e.EndedAt.IsZero() {
		t.Errorf("after the retries are used up: %+v", e)
	}
	if d := h.device("gw-00"); d.Desired.Version != 3 {
		t.Errorf("gw-00 given the job %d times, want 3", d.Desired.Version)
	}
	if d := h.device("gw-01"); d.Desired.Version != 2 {
		t.Errorf("gw-01 given the job %d times, want 2", d.Desired.Version)
	}
	r := h.rollout(id)
	if r.State != StateCompleted {
		t.Errorf("rollout %s, want COMPLETED", r.State)
	}
	if diff := cmp.Diff(counts(succeeded, 1, timedOut, 1), r.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
}

func TestControllerAbort(t *testing.T) {
	h := newHarness(t)
	devs := h.fleet("gw", 10, canary)
	spec := validSpec()
	spec.MaxInFlight = 4
	spec.Abort = []store.AbortRule{{Status: failed, Percent: 30, MinExecutions: 3}}
	spec.RollbackBundle = oldBundle
	id := h.create(spec)
	h.step(time.Second)
	h.step(time.Second)
	q := h.with(id, queued)
	if len(q) != 4 {
		t.Fatalf("at work: %v", q)
	}
	h.answer(q[0], replica.StatusSucceeded)
	h.answer(q[1], replica.StatusFailed)
	h.step(time.Second) // 1 of 2 failed: below the minimum of executions
	if r := h.rollout(id); r.State != StateRunning {
		t.Fatalf("aborted before the minimum of executions: %s", r.Reason)
	}
	busy := h.with(id, queued)
	if len(busy) != 4 {
		t.Fatalf("at work after two ended: %v", busy)
	}
	h.answer(q[2], replica.StatusFailed)
	h.step(time.Second)

	r := h.rollout(id)
	if r.State != StateAborted || !r.Rollback || r.EndedAt.IsZero() {
		t.Fatalf("rollout %s (rollback %v, ended %v), want ABORTED", r.State, r.Rollback, r.EndedAt)
	}
	if want := "2 of 3 executions ended FAILED (66.7%, limit 30%)"; r.Reason != want {
		t.Errorf("reason %q, want %q", r.Reason, want)
	}
	// The three at work were given the rollback bundle instead: CANCELED.
	if diff := cmp.Diff(counts(succeeded, 1, failed, 2, ExecCanceled, 7), r.Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	execs := h.execs(id)
	for _, dev := range devs {
		e, d := execs[dev], h.device(dev)
		switch {
		case e.Status == ExecCanceled && !e.RolledBack:
			if e.Message != "rollout aborted" || d.Desired.Version != 0 {
				t.Errorf("%s canceled: %+v, desired %+v", dev, e, d.Desired)
			}
		case e.Status == failed:
			// It did not move; it keeps the rollout's desired state.
			if e.RolledBack || d.Desired.Version != 1 || d.Desired.SetBy != setBy(id) {
				t.Errorf("%s failed: %+v, desired %+v", dev, e, d.Desired)
			}
		default: // succeeded or at work
			want := store.Desired{Version: 2, JobID: d.Desired.JobID, Bundle: oldBundle, Forced: true, SetBy: "rollout/" + id + "/rollback", SetAt: d.Desired.SetAt}
			if diff := cmp.Diff(want, d.Desired); diff != "" || !e.RolledBack {
				t.Errorf("%s (%s, rolled back %v) desired state (-want +got):\n%s", dev, e.Status, e.RolledBack, diff)
			}
		}
	}
	// The ended rollout is left alone: nobody gets the rollback twice.
	h.step(time.Minute)
	if again := h.rollout(id); again.Version != r.Version {
		t.Errorf("an aborted rollout was written again")
	}
	for _, dev := range busy {
		if v := h.device(dev).Desired.Version; v > 2 {
			t.Errorf("%s given %d desired states", dev, v)
		}
	}
}

func TestControllerCancel(t *testing.T) {
	for _, rollback := range []bool{false, true} {
		t.Run(fmt.Sprintf("rollback=%v", rollback), func(t *testing.T) {
			h := newHarness(t)
			devs := h.fleet("gw", 6, canary)
			spec := validSpec()
			spec.MaxInFlight = 3
			spec.RollbackBundle = oldBundle
			id := h.create(spec)
			h.step(time.Second)
			h.step(time.Second)
			q := h.with(id, queued)
			h.answer(q[0], replica.StatusSucceeded)
			h.answer(q[1], replica.StatusFailed)
			if _, err := h.svc.Cancel(h.ctx, id, "ann", rollback); err != nil {
				t.Fatal(err)
			}
			h.step(time.Second)
			r := h.rollout(id)
			if r.State != StateCanceled || r.EndedAt.IsZero() || r.Reason != "canceled by ann" || r.Rollback != rollback {
				t.Fatalf("after the cancel: %s (%s), ended %v, rollback %v", r.State, r.Reason, r.EndedAt, r.Rollback)
			}
			want := counts(succeeded, 1, failed, 1, queued, 1, ExecCanceled, 3)
			if rollback { // the one at work was given the rollback bundle instead
				want = counts(succeeded, 1, failed, 1, ExecCanceled, 4)
			}
			if diff := cmp.Diff(want, r.Counts); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
			execs := h.execs(id)
			for _, dev := range devs {
				e, d := execs[dev], h.device(dev)
				moved := e.Status == succeeded || e.Status == queued || e.RolledBack
				switch {
				case e.Status == ExecCanceled && !e.RolledBack:
					if e.Message != "rollout canceled" || d.Desired.Version != 0 {
						t.Errorf("%s: %+v, desired %+v", dev, e, d.Desired)
					}
				case moved && rollback:
					if !e.RolledBack || d.Desired.Bundle != oldBundle || !d.Desired.Forced || d.Desired.SetBy != setBy(id)+"/rollback" {
						t.Errorf("%s (%s) not rolled back: %+v", dev, e.Status, d.Desired)
					}
				default:
					if e.RolledBack || d.Desired.Version != 1 {
						t.Errorf("%s (%s) rolled back: %+v", dev, e.Status, d.Desired)
					}
				}
			}
		})
	}
	t.Run("before the start", func(t *testing.T) {
		h := newHarness(t)
		h.fleet("gw", 2, canary)
		spec := validSpec()
		spec.StartAt = h.clk.Now().Add(time.Hour)
		spec.RollbackBundle = oldBundle
		id := h.create(spec)
		h.step(time.Second)
		if _, err := h.svc.Cancel(h.ctx, id, "ann", true); err != nil {
			t.Fatal(err)
		}
		h.step(time.Second)
		r := h.rollout(id)
		if r.State != StateCanceled || r.EndedAt.IsZero() || !r.StartedAt.IsZero() || len(h.execs(id)) != 0 {
			t.Errorf("canceled before its start: %+v", r)
		}
		h.step(2 * time.Hour)
		if len(h.execs(id)) != 0 || h.device("gw-00").Desired.Version != 0 {
			t.Errorf("a rollout canceled before its start ran")
		}
	})
}

func TestControllerPauseResume(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 6, canary)
	spec := validSpec()
	spec.MaxInFlight = 2
	id := h.create(spec)
	h.step(time.Second)
	h.step(time.Second)
	first := h.with(id, queued)
	if len(first) != 2 {
		t.Fatalf("at work: %v", first)
	}
	if _, err := h.svc.Pause(h.ctx, id, "ann"); err != nil {
		t.Fatal(err)
	}
	h.answerAll(first, replica.StatusSucceeded)
	for range 3 {
		h.step(time.Minute)
	}
	r := h.rollout(id)
	if r.State != StatePaused {
		t.Fatalf("state %s, want PAUSED", r.State)
	}
	// Devices at work finish and are counted; nobody else gets the job.
	if diff := cmp.Diff(counts(succeeded, 2, ExecPending, 4), r.Counts); diff != "" {
		t.Errorf("counts while paused (-want +got):\n%s", diff)
	}
	if _, err := h.svc.Resume(h.ctx, id, "ann"); err != nil {
		t.Fatal(err)
	}
	h.step(time.Second)
	next := h.with(id, queued)
	if len(next) != 2 || slices.ContainsFunc(next, func(d string) bool { return slices.Contains(first, d) }) {
		t.Fatalf("after resume, at work: %v", next)
	}
	for i := 0; h.rollout(id).State == StateRunning; i++ {
		if i == 10 {
			t.Fatal("not completed")
		}
		h.answerAll(h.with(id, queued), replica.StatusSucceeded)
		h.step(time.Second)
	}
	if r := h.rollout(id); r.State != StateCompleted || r.Counts[succeeded] != 6 {
		t.Errorf("rollout %s, counts %v", r.State, r.Counts)
	}

	t.Run("before the start", func(t *testing.T) {
		id := h.create(validSpec())
		if _, err := h.svc.Pause(h.ctx, id, "ann"); err != nil {
			t.Fatal(err)
		}
		h.step(time.Second)
		if r := h.rollout(id); !r.StartedAt.IsZero() || len(h.execs(id)) != 0 {
			t.Fatalf("a paused rollout started: %+v", r)
		}
		if _, err := h.svc.Resume(h.ctx, id, "ann"); err != nil {
			t.Fatal(err)
		}
		h.step(time.Second)
		if r := h.rollout(id); r.StartedAt.IsZero() || r.State != StateRunning || len(h.execs(id)) != 6 {
			t.Fatalf("a resumed rollout did not start: %+v", r)
		}
	})
}

// TestControllerPauseDuringSoak: a paused rollout's wave finishes its
// soak, and the next wave starts only after resume.
func TestControllerPauseDuringSoak(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 2, canary)
	spec := validSpec()
	spec.Waves = []store.WaveSpec{{Count: 1}, {Percent: 100}}
	spec.Soak = 10 * time.Minute
	id := h.create(spec)
	h.step(time.Second)
	h.step(time.Second)
	h.answerAll(h.with(id, queued), replica.StatusSucceeded)
	h.step(time.Second)
	if r := h.rollout(id); r.Waves[0].State != WaveSoaking {
		t.Fatalf("wave 0: %+v", r.Waves[0])
	}
	if _, err := h.svc.Pause(h.ctx, id, "ann"); err != nil {
		t.Fatal(err)
	}
	h.step(time.Minute)
	h.step(10 * time.Minute)
	r := h.rollout(id)
	if r.State != StatePaused || r.Waves[0].State != WaveDone || r.Wave != 0 || r.Waves[1].State != WavePending {
		t.Fatalf("paused past the soak: %s, wave %d, %+v", r.State, r.Wave, r.Waves)
	}
	if got := h.with(id, queued); len(got) != 0 {
		t.Fatalf("given the job while paused: %v", got)
	}
	if _, err := h.svc.Resume(h.ctx, id, "ann"); err != nil {
		t.Fatal(err)
	}
	h.step(time.Second)
	r = h.rollout(id)
	if r.Wave != 1 || r.Waves[1].State != WaveRunning || len(h.with(id, queued)) != 1 {
		t.Errorf("after resume: wave %d, %+v, at work %v", r.Wave, r.Waves, h.with(id, queued))
	}
}

func TestControllerScheduled(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 2, canary)
	spec := validSpec()
	spec.StartAt = h.clk.Now().Add(time.Hour)
	id := h.create(spec)
	h.step(time.Second)
	h.step(59 * time.Minute)
	if r := h.rollout(id); r.State != StateScheduled || !r.StartedAt.IsZero() || len(h.execs(id)) != 0 {
		t.Fatalf("before its start time: %+v", r)
	}
	h.step(time.Minute)
	r := h.rollout(id)
	if r.State != StateRunning || r.StartedAt.Before(spec.StartAt) {
		t.Fatalf("at its start time: %s, started %v", r.State, r.StartedAt)
	}
	h.step(time.Second)
	if got := h.with(id, queued); len(got) != 2 {
		t.Errorf("at work after the start: %v", got)
	}
}

func TestControllerWindow(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 3, canary)
	spec := validSpec()
	spec.MaxInFlight = 1
	// 03:00 to 05:00 in Berlin is 02:00 to 04:00 UTC in November.
	spec.Window = &store.Window{Start: "03:00", Duration: 2 * time.Hour, Location: "Europe/Berlin"}
	id := h.create(spec) // Friday 2026-11-20 12:00 UTC
	h.step(time.Second)
	h.step(time.Minute)
	if r := h.rollout(id); r.State != StateRunning || len(h.with(id, ExecPending)) != 3 {
		t.Fatalf("outside the window: %s, pending %v", r.State, h.with(id, ExecPending))
	}
	at := func(s string) {
		t.Helper()
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		h.clk.Set(tm.Add(-time.Millisecond)) // step adds it back
		h.step(0)
	}
	at("2026-11-21T01:59:00Z")
	if got := h.with(id, queued); len(got) != 0 {
		t.Fatalf("given the job before the window: %v", got)
	}
	at("2026-11-21T02:00:00Z")
	q := h.with(id, queued)
	if len(q) != 1 {
		t.Fatalf("at the window's start, at work: %v", q)
	}
	h.answerAll(q, replica.StatusSucceeded)
	at("2026-11-21T03:59:59Z")
	q = h.with(id, queued)
	if len(q) != 1 {
		t.Fatalf("just before the window's end, at work: %v", q)
	}
	h.answerAll(q, replica.StatusSucceeded)
	at("2026-11-21T04:00:00Z")
	if r := h.rollout(id); len(h.with(id, queued)) != 0 || r.Counts[succeeded] != 2 || r.Counts[ExecPending] != 1 {
		t.Fatalf("at the window's end: counts %v", r.Counts)
	}
	at("2026-11-21T23:00:00Z")
	if len(h.with(id, queued)) != 0 {
		t.Fatal("given the job outside the window")
	}
	at("2026-11-22T02:00:30Z")
	q = h.with(id, queued)
	if len(q) != 1 {
		t.Fatalf("in the next day's window, at work: %v", q)
	}
	h.answerAll(q, replica.StatusSucceeded)
	h.step(time.Second)
	if r := h.rollout(id); r.State != StateCompleted {
		t.Errorf("rollout %s, want COMPLETED", r.State)
	}
}

func TestControllerRate(t *testing.T) {
	h := newHarness(t)
	h.fleet("gw", 36, canary)
	spec := validSpec()
	spec.Rate = &store.RateSpec{PerMinute: 6, Factor: 2, RaiseAfter: 12}
	id := h.create(spec)
	h.step(time.Second)
	if r := h.rollout(id); r.Rate != 6 || len(r.Waves) != 1 {
		t.Fatalf("at the start: rate %v, waves %d", r.Rate, len(r.Waves))
	}
	// Every 5 s of fake time, the devices given the job answer at once.
	// Count them per pace.
	const step = 5 * time.Second
	type phase struct {
		steps, devices int
	}
	phases := map[float64]*phase{}
	for i := 0; h.rollout(id).State == StateRunning; i++ {
		if i == 12*10 {
			t.Fatalf("not done after 10 minutes")
		}
		h.step(step)
		r := h.rollout(id)
		if want := currentRate(spec.Rate, r.Counts[succeeded]); r.Rate != want {
			t.Errorf("rate %v after %d successes, want %v", r.Rate, r.Counts[succeeded], want)
		}
		q := h.with(id, queued)
		if phases[r.Rate] == nil {
			phases[r.Rate] = &phase{}
		}
		phases[r.Rate].steps++
		phases[r.Rate].devices += len(q)
		h.answerAll(q, replica.StatusSucceeded)
	}
	for _, rate := range []float64{6, 12, 24} {
		p := phases[rate]
		if p == nil {
			t.Errorf("never ran at %v a minute", rate)
			continue
		}
		d := time.Duration(p.steps) * step
		t.Logf("at %v a minute: %d devices in %v", rate, p.devices, d)
		// The pace raises after every 12 successes; each pace gives the
		// job to about its number of devices a minute.
		if got := float64(p.devices) / d.Minutes(); p.devices != 12 || got < 0.8*rate || got > 1.25*rate {
			t.Errorf("at %v a minute: %d devices in %v", rate, p.devices, d)
		}
	}
	if r := h.rollout(id); r.State != StateCompleted || r.Rate != 48 || r.Counts[succeeded] != 36 {
		t.Errorf("rollout %s at rate %v, counts %v; want COMPLETED at 48", r.State, r.Rate, r.Counts)
	}
}

func TestControllerContinuous(t *testing.T) {
	h := newHarness(t)
	devs := h.fleet("gw", 2, canary)
	spec := validSpec()
	spec.Waves = []store.WaveSpec{{Count: 1}, {Percent: 100}}
	spec.Continuous = true
	id := h.create(spec)
	for range 6 {
		h.step(time.Second)
		h.answerAll(h.with(id, queued), replica.StatusSucceeded)
	}
	r := h.rollout(id)
	if r.State != StateRunning || r.Wave != 1 || r.Waves[1].State != WaveDone || r.Counts[succeeded] != 2 {
		t.Fatalf("after the waves: %s, wave %d %+v, counts %v", r.State, r.Wave, r.Waves, r.Counts)
	}

	// A device that joins later gets the job.
	h.register("gw-late", canary, oldBundle)
	h.register("st-late", map[string]string{"ring": "stable"}, oldBundle)
	h.step(time.Second)
	if !h.given("gw-late", id) {
		t.Fatalf("a device that joined was not given the job: %+v", h.device("gw-late").Desired)
	}
	if e := h.execs(id)["gw-late"]; e.Status != queued || e.Wave != 1 || e.Attempts != 1 {
		t.Errorf("execution of a device that joined: %+v", e)
	}
	h.answer("gw-late", replica.StatusSucceeded)
	h.step(time.Second)
	if e := h.execs(id)["gw-late"]; e.Status != succeeded {
		t.Errorf("execution of a device that joined, after it succeeded: %+v", e)
	}

	// A device that joins already running the bundle succeeds without a job.
	h.register("gw-ready", canary, newBundle)
	h.step(time.Second)
	if e := h.execs(id)["gw-ready"]; e.Status != succeeded || e.Message != "already runs the bundle" || e.JobID != "" {
		t.Errorf("execution of a device that joined on the bundle: %+v", e)
	}
	if d := h.device("gw-ready"); d.Desired.Version != 0 {
		t.Errorf("a device already on the bundle was given a job: %+v", d.Desired)
	}
	if _, ok := h.execs(id)["st-late"]; ok || h.device("st-late").Desired.Version != 0 {
		t.Errorf("a device outside the target set joined")
	}
	r = h.rollout(id)
	if r.State != StateRunning || r.Counts[succeeded] != 4 || r.Waves[1].Size != 3 {
		t.Errorf("continuous rollout: %s, counts %v, last wave %+v", r.State, r.Counts, r.Waves[1])
	}
	for _, dev := range devs {
		if v := h.device(dev).Desired.Version; v != 1 {
			t.Errorf("%s given %d jobs", dev, v)
		}
	}
	if _, err := h.svc.Cancel(h.ctx, id, "ann", false); err != nil {
		t.Fatal(err)
	}
	h.step(time.Second)
	if r := h.rollout(id); r.State != StateCanceled || r.EndedAt.IsZero() {
		t.Errorf("after cancel: %s", r.State)
	}
}

func TestControllerEdges(t *testing.T) {
	t.Run("no device matches", func(t *testing.T) {
		h := newHarness(t)
		spec := validSpec()
		spec.Waves = []store.WaveSpec{{Count: 1}, {Percent: 100}}
		spec.Soak = time.Hour
		id := h.create(spec)
		h.step(time.Second)
		r := h.rollout(id)
		if r.State != StateCompleted || r.Reason != "no device matches the target set" || r.EndedAt.IsZero() {
			t.Errorf("rollout without devices: %s (%s)", r.State, r.Reason)
		}
	})
	t.Run("desired state replaced", func(t *testing.T) {
		h := newHarness(t)
		h.fleet("gw", 2, canary)
		id := h.create(validSpec())
		h.step(time.Second)
		h.step(time.Second)
		// An operator gives gw-00 something else while it works on the
		// job: its execution is canceled and nobody gives it the job again.
		if _, err := h.rep.SetDesired(h.ctx, "gw-00", replica.Document{Bundle: bundle("fw-hotfix.bin")}, "operator:bob", nil); err != nil {
			t.Fatal(err)
		}
		h.answer("gw-01", replica.StatusSucceeded)
		h.step(time.Second)
		e := h.execs(id)["gw-00"]
		if e.Status != ExecCanceled || e.Message != "desired state replaced by operator:bob" || e.EndedAt.IsZero() {
			t.Errorf("execution of a device given another desired state: %+v", e)
		}
		h.step(time.Second)
		if d := h.device("gw-00"); d.Desired.Version != 2 || d.Desired.SetBy != "operator:bob" {
			t.Errorf("gw-00 desired state %+v, want the operator's", d.Desired)
		}
		if r := h.rollout(id); r.State != StateCompleted {
			t.Errorf("rollout %s, counts %v", r.State, r.Counts)
		}
	})
}

// TestControllerChangeNotices checks the passes between resyncs: the
// controller reads only the devices it was told changed.
func TestControllerChangeNotices(t *testing.T) {
	h := newHarness(t)
	h.c = h.controller("notices", time.Minute, time.Hour)
	h.db.ReleaseLease(h.ctx, store.RolloutLease, "test")
	h.lead(h.c)
	h.fleet("gw", 2, canary)
	spec := validSpec()
	spec.Continuous = true
	id := h.create(spec)
	h.step(time.Second) // the first pass is a full one: plan
	h.step(time.Second) // give the job: that needs no device read
	q := h.with(id, queued)
	if len(q) != 2 {
		t.Fatalf("at work: %v", q)
	}
	h.answerAll(q, replica.StatusSucceeded)
	h.step(time.Second)
	if got := h.with(id, succeeded); len(got) != 0 {
		t.Fatalf("succeeded without a change notice: %v", got)
	}
	notify := func(ids ...string) {
		h.c.mu.Lock()
		for _, id := range ids {
			h.c.dirty[id] = struct{}{}
		}
		h.c.mu.Unlock()
	}
	notify(q[0])
	h.step(time.Second)
	if got := h.with(id, succeeded); !slices.Equal(got, q[:1]) {
		t.Fatalf("after a notice for %s, succeeded: %v", q[0], got)
	}
	// A device that joins a continuous rollout is seen by its notice.
	h.register("gw-late", canary, oldBundle)
	notify(q[1], "gw-late")
	h.step(time.Second)
	if got := h.with(id, succeeded); len(got) != 2 || !h.given("gw-late", id) {
		t.Errorf("after notices: succeeded %v, gw-late given the job %v", got, h.given("gw-late", id))
	}
	// A full pass catches a lost notice.
	h.answer("gw-late", replica.StatusSucceeded)
	h.step(time.Second)
	if h.execs(id)["gw-late"].Status != queued {
		t.Fatalf("gw-late seen without a notice")
	}
	h.step(time.Hour)
	if got := h.with(id, succeeded); len(got) != 3 {
		t.Errorf("after a full pass, succeeded: %v", got)
	}
}

func TestControllerFenced(t *testing.T) {
	t.Run("another holder", func(t *testing.T) {
		h := newHarness(t)
		h.db.ReleaseLease(h.ctx, store.RolloutLease, "test")
		a := h.controller("a", 30*time.Millisecond, time.Nanosecond)
		h.lead(a)
		time.Sleep(60 * time.Millisecond) // a's lease lapses (bolt's lease clock is the real one)
		b := h.controller("b", time.Minute, time.Nanosecond)
		h.lead(b)
		if b.fence.Load() <= a.fence.Load() {
			t.Fatalf("fence %d after %d", b.fence.Load(), a.fence.Load())
		}
		devs := h.fleet("gw", 2, canary)
		id := h.create(validSpec())
		h.clk.Add(time.Second)
		if err := a.reconcileAll(h.ctx); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("reconcileAll of a controller whose lease was taken = %v, want ErrFenced", err)
		}
		if r := h.rollout(id); r.Version != 1 || !r.StartedAt.IsZero() || len(h.execs(id)) != 0 {
			t.Errorf("a fenced controller wrote: %+v, %d executions", r, len(h.execs(id)))
		}
		a.renew(h.ctx)
		if a.Leading() {
			t.Errorf("a controller whose lease was taken still leads")
		}
		h.stepWith(b, time.Second)
		h.stepWith(b, time.Second)
		for _, dev := range devs {
			if !h.given(dev, id) {
				t.Errorf("%s not given the job by the new holder", dev)
			}
		}
		// The old holder, once it has something to write, is fenced
		// before it gives anyone the job.
		late := h.create(validSpec())
		h.stepWith(b, time.Second)
		h.clk.Add(time.Second)
		if err := a.reconcileAll(h.ctx); !errors.Is(err, store.ErrFenced) {
			t.Errorf("reconcileAll of the old holder = %v, want ErrFenced", err)
		}
		for _, dev := range devs {
			if d := h.device(dev); d.Desired.SetBy == setBy(late) {
				t.Errorf("the old holder gave %s the job", dev)
			}
		}
	})
	t.Run("lapsed", func(t *testing.T) {
		h := newHarness(t)
		h.db.ReleaseLease(h.ctx, store.RolloutLease, "test")
		a := h.controller("a", 30*time.Millisecond, time.Nanosecond)
		h.lead(a)
		old := a.fence.Load()
		h.fleet("gw", 1, canary)
		id := h.create(validSpec())
		time.Sleep(60 * time.Millisecond)
		h.clk.Add(time.Second)
		if err := a.reconcileAll(h.ctx); !errors.Is(err, store.ErrFenced) {
			t.Fatalf("reconcileAll after the lease lapsed = %v, want ErrFenced", err)
		}
		a.cfg.LeaseTTL = time.Minute
		h.lead(a) // nobody took it: a takes it again, with a new token
		if a.fence.Load() <= old {
			t.Errorf("fence %d after %d", a.fence.Load(), old)
		}
		h.stepWith(a, time.Second)
		if r := h.rollout(id); r.StartedAt.IsZero() {
			t.Errorf("not started after the lease was taken again")
		}
	})
}

// TestControllerTakeover stops a controller in the middle of a rollout
// (as a crash would) and lets another finish it.
func TestControllerTakeover(t *testing.T) {
	t.Run("complete", func(t *testing.T) {
		h := newHarness(t)
		a := h.c
		devs := h.fleet("gw", 7, canary)
		spec := validSpec()
		spec.Waves = []store.WaveSpec{{Count: 2}, {Count: 3}, {Percent: 100}}
		spec.MaxInFlight = 2
		id := h.create(spec)
		h.step(time.Second)
		h.step(time.Second)
		h.answerAll(h.with(id, queued), replica.StatusSucceeded)
		h.step(time.Second) // wave 0 done; two of wave 1 given the job
		busy := h.with(id, queued)
		pending := h.with(id, ExecPending)
		if len(busy) != 2 || h.rollout(id).Wave != 1 {
			t.Fatalf("at work in wave 1: %v", busy)
		}
		var z string
		for _, dev := range pending {
			if h.execs(id)[dev].Wave == 1 {
				z = dev
			}
		}
		x, y := busy[0], busy[1]
		// The crash came as a stopped controller was handing out jobs: it
		// had recorded its intent for z but not given it the job, and had
		// given x the job without recording it.
		now := h.clk.Now()
		put := []store.Execution{
			{DeviceID: z, Wave: 1, Status: queued, Attempts: 1, DispatchedAt: now},
			{DeviceID: x, Wave: 1, Status: queued, Attempts: 1, DispatchedAt: now},
		}
		if err := h.db.PutExecutions(h.ctx, id, 0, put); err != nil {
			t.Fatal(err)
		}
		h.answer(y, replica.StatusSucceeded) // while nobody leads
		if err := h.db.ReleaseLease(h.ctx, store.RolloutLease, "test"); err != nil {
			t.Fatal(err)
		}

		b := h.controller("b", time.Minute, time.Nanosecond)
		h.lead(b)
		h.clk.Add(time.Second)
		if err := a.reconcileAll(h.ctx); !errors.Is(err, store.ErrFenced) {
			t.Errorf("the stopped controller's step = %v, want ErrFenced", err)
		}
		if h.device(z).Desired.Version != 0 {
			t.Errorf("the stopped controller gave %s the job", z)
		}
		for i := 0; h.rollout(id).State == StateRunning; i++ {
			if i == 20 {
				t.Fatalf("not completed: %+v", h.rollout(id))
			}
			h.stepWith(b, time.Second)
			h.answerAll(h.with(id, queued), replica.StatusSucceeded)
		}
		if r := h.rollout(id); r.State != StateCompleted || r.Counts[succeeded] != 7 {
			t.Errorf("rollout %s, counts %v", r.State, r.Counts)
		}
		for _, dev := range devs {
			if d := h.device(dev); d.Desired.Version != 1 {
				t.Errorf("%s given the job %d times", dev, d.Desired.Version)
			}
			if e := h.execs(id)[dev]; e.Attempts != 1 || e.Status != succeeded {
				t.Errorf("execution of %s: %+v", dev, e)
			}
		}
	})
	t.Run("cancel with rollback", func(t *testing.T) {
		// Devices given the job by a controller that stopped get the
		// rollback bundle from the one that takes over.
		h := newHarness(t)
		h.fleet("gw", 4, canary)
		spec := validSpec()
		spec.MaxInFlight = 2
		spec.RollbackBundle = oldBundle
		id := h.create(spec)
		h.step(time.Second)
		h.step(time.Second)
		busy := h.with(id, queued)
		if len(busy) != 2 {
			t.Fatalf("at work: %v", busy)
		}
		if err := h.db.ReleaseLease(h.ctx, store.RolloutLease, "test"); err != nil {
			t.Fatal(err)
		}
		if _, err := h.svc.Cancel(h.ctx, id, "ann", true); err != nil {
			t.Fatal(err)
		}
		b := h.controller("b", time.Minute, time.Nanosecond)
		h.lead(b)
		h.stepWith(b, time.Second)
		if r := h.rollout(id); r.State != StateCanceled || r.EndedAt.IsZero() {
			t.Fatalf("rollout %s", r.State)
		}
		for _, dev := range busy {
			if d := h.device(dev); d.Desired.Bundle != oldBundle || d.Desired.SetBy != setBy(id)+"/rollback" {
				t.Errorf("%s was given the job but not the rollback bundle: %+v (execution %+v)", dev, d.Desired, h.execs(id)[dev])
			}
		}
		if diff := cmp.Diff(counts(ExecCanceled, 4), h.rollout(id).Counts); diff != "" {
			t.Errorf("counts (-want +got):\n%s", diff)
		}
	})
	t.Run("stopped while giving the job, then paused and canceled", func(t *testing.T) {
		// The stopped controller gave x the job but did not record it.
		// The rollout is paused, so the new controller gives nobody the
		// job; canceled with rollback, x must get the rollback bundle.
		h := newHarness(t)
		h.fleet("gw", 3, canary)
		spec := validSpec()
		spec.MaxInFlight = 1
		spec.RollbackBundle = oldBundle
		id := h.create(spec)
		h.step(time.Second)
		h.step(time.Second)
		busy := h.with(id, queued)
		if len(busy) != 1 {
			t.Fatalf("at work: %v", busy)
		}
		x := busy[0]
		e := h.execs(id)[x]
		e.JobID, e.DesiredVersion = "", 0
		if err := h.db.PutExecutions(h.ctx, id, 0, []store.Execution{e}); err != nil {
			t.Fatal(err)
		}
		if err := h.db.ReleaseLease(h.ctx, store.RolloutLease, "test"); err != nil {
			t.Fatal(err)
		}
		if _, err := h.svc.Pause(h.ctx, id, "ann"); err != nil {
			t.Fatal(err)
		}
		b := h.controller("b", time.Minute, time.Nanosecond)
		h.lead(b)
		h.stepWith(b, time.Second)
		if got := h.rollout(id).Counts; got[queued] != 1 {
			t.Errorf("paused after a takeover, counts %v; want x at work", got)
		}
		if _, err := h.svc.Cancel(h.ctx, id, "ann", true); err != nil {
			t.Fatal(err)
		}
		h.stepWith(b, time.Second)
		if d := h.device(x); d.Desired.Bundle != oldBundle || d.Desired.SetBy != setBy(id)+"/rollback" {
			t.Errorf("%s was given the job but not the rollback bundle: %+v (execution %+v)", x, d.Desired, h.execs(id)[x])
		}
		for dev, e := range h.execs(id) {
			if dev != x && (e.Status != ExecCanceled || h.device(dev).Desired.Version != 0) {
				t.Errorf("%s: %+v", dev, e)
			}
		}
	})
}

// TestControllerRun runs the controller for real: its own ticker, its
// lease, and change notices from the replica.
func TestControllerRun(t *testing.T) {
	sh := newServiceHarness(t)
	c := NewController(ControllerConfig{Rollouts: sh.db, Leases: sh.db, Replica: sh.rep, Holder: "run",
		LeaseTTL: 3 * time.Second, Tick: 5 * time.Millisecond, Resync: time.Hour, Logger: quiet})
	h := &harness{serviceHarness: sh, t: t, c: c}
	ctx, cancel := context.WithCancel(h.ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitFor(t, "leadership", c.Leading)

	devs := h.fleet("gw", 3, canary)
	id := h.create(validSpec())
	answered := map[string]bool{}
	waitFor(t, "every device to get the job and answer", func() bool {
		for _, dev := range devs {
			if !answered[dev] && h.given(dev, id) {
				h.answer(dev, replica.StatusSucceeded)
				answered[dev] = true
			}
		}
		return len(answered) == len(devs)
	})
	waitFor(t, "the rollout to complete", func() bool { return h.rollout(id).State == StateCompleted })
	if diff := cmp.Diff(counts(succeeded, 3), h.rollout(id).Counts); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if c.Leading() {
		t.Errorf("leads after Run returned")
	}
	// Run gave the lease up: another instance takes it at once.
	if _, err := h.db.AcquireLease(h.ctx, store.RolloutLease, "next", time.Minute); err != nil {
		t.Errorf("lease after Run returned: %v", err)
	}
}

// TestControllerSoakNeedsReports: a device that succeeded must keep
// reporting (answer pings, which record it as seen) through the soak. One
// that went silent ends TIMED_OUT when the soak is over, and the wave is
// done without it.
func TestControllerSoakNeedsReports(t *testing.T) {
	h := newHarness(t)
	h.c.cfg.SilentAfter = 3 * time.Minute
	devs := h.fleet("gw", 2, canary)
	spec := validSpec()
	spec.Soak = 10 * time.Minute
	id := h.create(spec)
	h.step(time.Second)
	h.step(time.Second)
	h.answerAll(devs, replica.StatusSucceeded)
	h.step(time.Second)
	if w := h.rollout(id).Waves[0]; w.State != WaveSoaking {
		t.Fatalf("wave %+v, want SOAKING", w)
	}
	alive, silent := devs[0], devs[1]
	for range 10 { // a minute at a time; only one device answers its pings
		h.clk.Add(time.Minute)
		if err := h.rep.Seen(h.ctx, alive); err != nil {
			t.Fatal(err)
		}
		if err := h.rep.Flush(h.ctx); err != nil { // what Run does every second
			t.Fatal(err)
		}
		h.step(time.Millisecond)
	}
	h.step(time.Second)
	h.step(time.Second)
	execs := h.execs(id)
	if e := execs[alive]; e.Status != succeeded {
		t.Errorf("the device that kept reporting: %+v", e)
	}
	if e := execs[silent]; e.Status != string(replica.StatusTimedOut) || !strings.Contains(e.Message, "silent during the soak") {
		t.Errorf("the silent device: %+v", e)
	}
	if r := h.rollout(id); r.State != StateCompleted || r.Counts[string(replica.StatusTimedOut)] != 1 {
		t.Errorf("rollout %s %v, want COMPLETED with one TIMED_OUT", r.State, r.Counts)
	}
}
