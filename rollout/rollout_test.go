package rollout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
)

const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

func bundle(target string) store.Bundle {
	return store.Bundle{TargetPath: target, Length: 1024, SHA256: sum}
}

var (
	oldBundle = bundle("fw-1.bin") // what devices run before a rollout
	newBundle = bundle("fw-2.bin") // what rollouts give them
)

// clock is a fake clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

// newClock starts on a fixed Friday: the window tests need a known weekday
// and a winter date in Europe/Berlin. Nothing here compares it with a real
// clock (stores get durations, never these times, for leases), so it is
// right on any date.
func newClock() *clock { return &clock{t: time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var quiet = slog.New(slog.DiscardHandler)

func openStore(t *testing.T) *bolt.Store {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// validSpec is the smallest valid specification.
func validSpec() store.RolloutSpec {
	return store.RolloutSpec{Bundle: newBundle, Labels: map[string]string{"ring": "canary"}}
}

// fullSpec sets every field.
func fullSpec() store.RolloutSpec {
	return store.RolloutSpec{
		Name:           "autumn firmware",
		Bundle:         newBundle,
		Labels:         map[string]string{"model": "gw2", "ring": "canary"},
		Waves:          []store.WaveSpec{{Count: 1}, {Percent: 10}, {Percent: 100}},
		MaxInFlight:    50,
		DeviceTimeout:  30 * time.Minute,
		Retries:        MaxRetries,
		Soak:           time.Hour,
		Abort:          []store.AbortRule{{Status: "FAILED", Percent: 5, MinExecutions: 20}, {Status: "ROLLED_BACK", Percent: 100}},
		RollbackBundle: oldBundle,
		StartAt:        time.Date(2026, 12, 1, 2, 0, 0, 0, time.UTC),
		Window:         &store.Window{Start: "02:00", Duration: 3 * time.Hour, Days: []time.Weekday{time.Monday}, Location: "Europe/Berlin"},
		Continuous:     true,
	}
}

func TestValidate(t *testing.T) {
	if err := Validate(validSpec()); err != nil {
		t.Errorf("Validate(minimal spec) = %v", err)
	}
	if err := Validate(fullSpec()); err != nil {
		t.Errorf("Validate(full spec) = %v", err)
	}
	for _, ok := range []func(*store.RolloutSpec){
		func(s *store.RolloutSpec) { s.Labels, s.Devices = nil, []string{"dev-1", "gw.2_b"} },
		func(s *store.RolloutSpec) { s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: 0.01} },
		func(s *store.RolloutSpec) {
			s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: 10, Factor: 2, RaiseAfter: 5}
		},
		func(s *store.RolloutSpec) { s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: 10, Factor: 1} },
		func(s *store.RolloutSpec) { s.Name = strings.Repeat("é", MaxNameBytes/2) },
		func(s *store.RolloutSpec) { s.Waves = make([]store.WaveSpec, MaxWaves); fill(s.Waves) },
		func(s *store.RolloutSpec) { s.Abort = make([]store.AbortRule, MaxAbortRules); fillRules(s.Abort) },
		func(s *store.RolloutSpec) { s.Labels, s.Devices = nil, deviceIDs(MaxDevices) },
		func(s *store.RolloutSpec) { s.DeviceTimeout, s.Soak = maxDeviceDelay, maxDeviceDelay },
		func(s *store.RolloutSpec) { s.Waves = []store.WaveSpec{{Percent: 100}} },
	} {
		spec := validSpec()
		ok(&spec)
		if err := Validate(spec); err != nil {
			t.Errorf("Validate(%+v) = %v", spec, err)
		}
	}

	tests := []struct {
		name   string
		change func(*store.RolloutSpec)
		field  string
	}{
		{"long name", func(s *store.RolloutSpec) { s.Name = strings.Repeat("x", MaxNameBytes+1) }, "name"},
		{"control character in name", func(s *store.RolloutSpec) { s.Name = "a\nb" }, "name"},
		{"DEL in name", func(s *store.RolloutSpec) { s.Name = "a\x7f" }, "name"},
		{"no bundle", func(s *store.RolloutSpec) { s.Bundle = store.Bundle{} }, "bundle"},
		{"bad bundle hash", func(s *store.RolloutSpec) { s.Bundle.SHA256 = "abc" }, "bundle.sha256"},
		{"bad bundle path", func(s *store.RolloutSpec) { s.Bundle.TargetPath = "../x" }, "bundle.target_path"},
		{"bad bundle length", func(s *store.RolloutSpec) { s.Bundle.Length = 0 }, "bundle.length"},
		{"bad rollback bundle", func(s *store.RolloutSpec) {
			s.RollbackBundle = store.Bundle{TargetPath: "/abs", Length: 1, SHA256: sum}
		}, "rollback_bundle.target_path"},
		{"no target", func(s *store.RolloutSpec) { s.Labels = nil }, "selector"},
		{"selector and devices", func(s *store.RolloutSpec) { s.Devices = []string{"dev-1"} }, "device_ids"},
		{"too many devices", func(s *store.RolloutSpec) { s.Labels, s.Devices = nil, deviceIDs(MaxDevices+1) }, "device_ids"},
		{"continuous device list", func(s *store.RolloutSpec) { s.Labels, s.Devices, s.Continuous = nil, []string{"dev-1"}, true }, "continuous"},
		{"bad device id", func(s *store.RolloutSpec) { s.Labels, s.Devices = nil, []string{"dev-1", "-dev"} }, "device_ids"},
		{"empty device id", func(s *store.RolloutSpec) { s.Labels, s.Devices = nil, []string{""} }, "device_ids"},
		{"device listed twice", func(s *store.RolloutSpec) { s.Labels, s.Devices = nil, []string{"dev-1", "dev-2", "dev-1"} }, "device_ids"},
		{"waves and rate", func(s *store.RolloutSpec) {
			s.Waves, s.Rate = []store.WaveSpec{{Count: 1}}, &store.RateSpec{PerMinute: 1}
		}, "strategy"},
		{"too many waves", func(s *store.RolloutSpec) { s.Waves = make([]store.WaveSpec, MaxWaves+1); fill(s.Waves) }, "strategy.waves"},
		{"wave with count and percent", func(s *store.RolloutSpec) { s.Waves = []store.WaveSpec{{Count: 1}, {Count: 2, Percent: 5}} }, "strategy.waves[1]"},
		{"empty wave", func(s *store.RolloutSpec) { s.Waves = []store.WaveSpec{{}} }, "strategy.waves[0]"},
		{"negative percent", func(s *store.RolloutSpec) { s.Waves = []store.WaveSpec{{Percent: -5}} }, "strategy.waves[0]"},
		{"percent above 100", func(s *store.RolloutSpec) { s.Waves = []store.WaveSpec{{Percent: 100.5}} }, "strategy.waves[0]"},
		{"NaN percent", func(s *store.RolloutSpec) { s.Waves = []store.WaveSpec{{Percent: math.NaN()}} }, "strategy.waves[0]"},
		{"NaN percent with a count", func(s *store.RolloutSpec) { s.Waves = []store.WaveSpec{{Count: 1, Percent: math.NaN()}} }, "strategy.waves[0]"},
		{"rate too slow", func(s *store.RolloutSpec) { s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: 0.001} }, "strategy.rate.base_per_minute"},
		{"rate zero", func(s *store.RolloutSpec) { s.Waves, s.Rate = nil, &store.RateSpec{} }, "strategy.rate.base_per_minute"},
		{"rate NaN", func(s *store.RolloutSpec) { s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: math.NaN()} }, "strategy.rate.base_per_minute"},
		{"rate infinite", func(s *store.RolloutSpec) { s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: math.Inf(1)} }, "strategy.rate.base_per_minute"},
		{"factor below 1", func(s *store.RolloutSpec) {
			s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: 1, Factor: 0.5, RaiseAfter: 1}
		}, "strategy.rate.factor"},
		{"factor too big", func(s *store.RolloutSpec) {
			s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: 1, Factor: 101, RaiseAfter: 1}
		}, "strategy.rate.factor"},
		{"factor NaN", func(s *store.RolloutSpec) {
			s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: 1, Factor: math.NaN(), RaiseAfter: 1}
		}, "strategy.rate.factor"},
		{"factor without raise_after", func(s *store.RolloutSpec) { s.Waves, s.Rate = nil, &store.RateSpec{PerMinute: 1, Factor: 2} }, "strategy.rate.raise_after_successes"},
		{"negative timeout", func(s *store.RolloutSpec) { s.DeviceTimeout = -time.Second }, "strategy.device_timeout"},
		{"timeout too long", func(s *store.RolloutSpec) { s.DeviceTimeout = maxDeviceDelay + 1 }, "strategy.device_timeout"},
		{"negative soak", func(s *store.RolloutSpec) { s.Soak = -time.Second }, "strategy.soak"},
		{"soak too long", func(s *store.RolloutSpec) { s.Soak = maxDeviceDelay + 1 }, "strategy.soak"},
		{"too many retries", func(s *store.RolloutSpec) { s.Retries = MaxRetries + 1 }, "strategy.retries"},
		{"too many abort rules", func(s *store.RolloutSpec) { s.Abort = make([]store.AbortRule, MaxAbortRules+1); fillRules(s.Abort) }, "abort_rules"},
		{"abort on success", func(s *store.RolloutSpec) {
			s.Abort = []store.AbortRule{{Status: "FAILED", Percent: 5}, {Status: "SUCCEEDED", Percent: 5}}
		}, "abort_rules[1].status"},
		{"abort on no status", func(s *store.RolloutSpec) { s.Abort = []store.AbortRule{{Percent: 5}} }, "abort_rules[0].status"},
		{"abort on lower-case status", func(s *store.RolloutSpec) { s.Abort = []store.AbortRule{{Status: "failed", Percent: 5}} }, "abort_rules[0].status"},
		{"abort at 0 percent", func(s *store.RolloutSpec) { s.Abort = []store.AbortRule{{Status: "FAILED"}} }, "abort_rules[0].percent"},
		{"abort above 100 percent", func(s *store.RolloutSpec) { s.Abort = []store.AbortRule{{Status: "TIMED_OUT", Percent: 101}} }, "abort_rules[0].percent"},
		{"abort NaN percent", func(s *store.RolloutSpec) { s.Abort = []store.AbortRule{{Status: "REJECTED", Percent: math.NaN()}} }, "abort_rules[0].percent"},
		{"bad window start", func(s *store.RolloutSpec) { s.Window = &store.Window{Start: "2am", Duration: time.Hour} }, "maintenance_window"},
		{"window without duration", func(s *store.RolloutSpec) { s.Window = &store.Window{Start: "02:00"} }, "maintenance_window"},
		{"window in an unknown zone", func(s *store.RolloutSpec) {
			s.Window = &store.Window{Start: "02:00", Duration: time.Hour, Location: "Nowhere/Town"}
		}, "maintenance_window"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec := fullSpec()
			spec.Continuous = false
			tt.change(&spec)
			err := Validate(spec)
			var ie *replica.InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("Validate = %v, want a *replica.InvalidError", err)
			}
			if ie.Field != tt.field {
				t.Errorf("Validate error field = %q (%v), want %q", ie.Field, err, tt.field)
			}
		})
	}
}

func fill(waves []store.WaveSpec) {
	for i := range waves {
		waves[i] = store.WaveSpec{Count: 1}
	}
}

func fillRules(rules []store.AbortRule) {
	for i := range rules {
		rules[i] = store.AbortRule{Status: "FAILED", Percent: 50}
	}
}

func deviceIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("dev-%06d", i)
	}
	return out
}

type serviceHarness struct {
	ctx context.Context
	clk *clock
	db  *bolt.Store
	rep *replica.Service
	svc *Service
}

func newServiceHarness(t *testing.T) *serviceHarness {
	t.Helper()
	clk := newClock()
	db := openStore(t)
	rep := replica.New(replica.Config{Devices: db, Logger: quiet, Now: clk.Now})
	svc := New(Config{Rollouts: db, Logger: quiet, Now: clk.Now, WatchInterval: time.Millisecond})
	return &serviceHarness{ctx: context.Background(), clk: clk, db: db, rep: rep, svc: svc}
}

var idPattern = regexp.MustCompile(`^r-\d{8}-\d{6}-\d{3}-[0-9a-f]{6}$`)

func TestCreate(t *testing.T) {
	h := newServiceHarness(t)
	now := h.clk.Now()

	r, err := h.svc.Create(h.ctx, validSpec(), "operator:ann")
	if err != nil {
		t.Fatal(err)
	}
	if !idPattern.MatchString(r.ID) || !strings.HasPrefix(r.ID, "r-20261120-120000-") {
		t.Errorf("id %q, want r-20261120-120000-xxxxxx", r.ID)
	}
	want := store.Rollout{ID: r.ID, Version: 1, Spec: validSpec(), State: StateRunning, CreatedBy: "operator:ann", CreatedAt: now, UpdatedAt: now}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("Create (-want +got):\n%s", diff)
	}
	got, err := h.svc.Get(h.ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Get after Create (-want +got):\n%s", diff)
	}

	// A start time in the past or now starts at once.
	past := validSpec()
	past.StartAt = now
	if r, err := h.svc.Create(h.ctx, past, "op"); err != nil || r.State != StateRunning {
		t.Errorf("Create with StartAt now = %v, %v; want RUNNING", r.State, err)
	}
	future := validSpec()
	future.StartAt = now.Add(time.Hour)
	r2, err := h.svc.Create(h.ctx, future, "op")
	if err != nil || r2.State != StateScheduled {
		t.Errorf("Create with StartAt in an hour = %v, %v; want SCHEDULED", r2.State, err)
	}
	if r2.ID == r.ID {
		t.Errorf("two rollouts created in the same second share id %q", r.ID)
	}

	// An invalid spec stores nothing.
	bad := validSpec()
	bad.Labels = nil
	if _, err := h.svc.Create(h.ctx, bad, "op"); !errors.As(err, new(*replica.InvalidError)) {
		t.Errorf("Create(invalid) = %v, want InvalidError", err)
	}
	if list, err := h.svc.List(h.ctx, "", 100); err != nil || len(list) != 3 {
		t.Errorf("List = %d rollouts, %v; want 3", len(list), err)
	}
}

func TestGetAndList(t *testing.T) {
	h := newServiceHarness(t)
	if _, err := h.svc.Get(h.ctx, "r-20261120-120000-abcdef"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(unknown) = %v, want ErrNotFound", err)
	}
	for _, id := range []string{"", "R-UPPER", "r_1", "r-1/2", strings.Repeat("r", 65)} {
		var ie *replica.InvalidError
		if _, err := h.svc.Get(h.ctx, id); !errors.As(err, &ie) || ie.Field != "rollout_id" {
			t.Errorf("Get(%q) = %v, want InvalidError on rollout_id", id, err)
		}
	}
	if _, err := h.svc.Executions(h.ctx, "r-20261120-120000-abcdef", "", "", 10); !errors.Is(err, ErrNotFound) {
		t.Errorf("Executions(unknown) = %v, want ErrNotFound", err)
	}

	var ids []string
	for range 5 {
		r, err := h.svc.Create(h.ctx, validSpec(), "op")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.ID)
		h.clk.Add(time.Second)
	}
	idsOf := func(rs []store.Rollout) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	all, err := h.svc.List(h.ctx, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{ids[4], ids[3], ids[2], ids[1], ids[0]}, idsOf(all)); diff != "" {
		t.Errorf("List, newest first (-want +got):\n%s", diff)
	}
	page, err := h.svc.List(h.ctx, "", 2)
	if err != nil {
		t.Fatal(err)
	}
	next, err := h.svc.List(h.ctx, page[len(page)-1].ID, 2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{ids[4], ids[3], ids[2], ids[1]}, append(idsOf(page), idsOf(next)...)); diff != "" {
		t.Errorf("List in pages (-want +got):\n%s", diff)
	}
	var ie *replica.InvalidError
	if _, err := h.svc.List(h.ctx, "not/a token", 2); !errors.As(err, &ie) || ie.Field != "page_token" {
		t.Errorf("List(bad token) = %v, want InvalidError on page_token", err)
	}
}

func TestSteer(t *testing.T) {
	h := newServiceHarness(t)
	create := func(spec store.RolloutSpec) store.Rollout {
		t.Helper()
		r, err := h.svc.Create(h.ctx, spec, "op")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// setState writes a state as the controller would.
	setState := func(r store.Rollout, state string, ended bool) store.Rollout {
		t.Helper()
		cur, err := h.db.GetRollout(h.ctx, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		next := cur
		next.State, next.Version = state, cur.Version+1
		if ended {
			next.EndedAt = h.clk.Now()
		}
		out, err := h.db.UpdateRollout(h.ctx, cur.Version, next, 0)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	t.Run("pause and resume", func(t *testing.T) {
		r := create(validSpec())
		p, err := h.svc.Pause(h.ctx, r.ID, "ann")
		if err != nil || p.State != StatePaused || p.Reason != "paused by ann" || p.Version != 2 {
			t.Fatalf("Pause = %+v, %v", p, err)
		}
		if again, err := h.svc.Pause(h.ctx, r.ID, "bob"); err != nil || again.Version != 2 || again.Reason != "paused by ann" {
			t.Errorf("Pause again = %+v, %v; want no change", again, err)
		}
		res, err := h.svc.Resume(h.ctx, r.ID, "bob")
		if err != nil || res.State != StateRunning || res.Reason != "resumed by bob" || res.Version != 3 {
			t.Fatalf("Resume = %+v, %v", res, err)
		}
		if again, err := h.svc.Resume(h.ctx, r.ID, "bob"); err != nil || again.Version != 3 {
			t.Errorf("Resume again = %+v, %v; want no change", again, err)
		}
	})
	t.Run("resume before the start time", func(t *testing.T) {
		spec := validSpec()
		spec.StartAt = h.clk.Now().Add(time.Hour)
		r := create(spec)
		if p, err := h.svc.Pause(h.ctx, r.ID, "ann"); err != nil || p.State != StatePaused {
			t.Fatalf("Pause a scheduled rollout = %+v, %v", p, err)
		}
		if res, err := h.svc.Resume(h.ctx, r.ID, "ann"); err != nil || res.State != StateScheduled {
			t.Errorf("Resume before the start time = %v, %v; want SCHEDULED", res.State, err)
		}
		if _, err := h.svc.Pause(h.ctx, r.ID, "ann"); err != nil {
			t.Fatal(err)
		}
		h.clk.Add(2 * time.Hour)
		if res, err := h.svc.Resume(h.ctx, r.ID, "ann"); err != nil || res.State != StateRunning {
			t.Errorf("Resume after the start time = %v, %v; want RUNNING", res.State, err)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		r := create(validSpec())
		c, err := h.svc.Cancel(h.ctx, r.ID, "ann", false)
		if err != nil || c.State != StateCanceled || c.Rollback || c.Reason != "canceled by ann" {
			t.Fatalf("Cancel = %+v, %v", c, err)
		}
		if again, err := h.svc.Cancel(h.ctx, r.ID, "bob", false); err != nil || again.Version != c.Version {
			t.Errorf("Cancel again = %+v, %v; want no change", again, err)
		}
		for name, op := range map[string]func() (store.Rollout, error){
			"pause":  func() (store.Rollout, error) { return h.svc.Pause(h.ctx, r.ID, "ann") },
			"resume": func() (store.Rollout, error) { return h.svc.Resume(h.ctx, r.ID, "ann") },
		} {
			if _, err := op(); !errors.Is(err, ErrState) {
				t.Errorf("%s a canceled rollout = %v, want ErrState", name, err)
			}
		}
	})
	t.Run("cancel with rollback", func(t *testing.T) {
		var ie *replica.InvalidError
		r := create(validSpec())
		if _, err := h.svc.Cancel(h.ctx, r.ID, "ann", true); !errors.As(err, &ie) || ie.Field != "rollback" {
			t.Errorf("Cancel with rollback and no rollback bundle = %v, want InvalidError on rollback", err)
		}
		if got, _ := h.svc.Get(h.ctx, r.ID); got.State != StateRunning {
			t.Errorf("a failed cancel changed the state to %s", got.State)
		}
		spec := validSpec()
		spec.RollbackBundle = oldBundle
		r = create(spec)
		if c, err := h.svc.Cancel(h.ctx, r.ID, "ann", true); err != nil || c.State != StateCanceled || !c.Rollback {
			t.Errorf("Cancel with rollback = %+v, %v", c, err)
		}
		// A cancel not yet carried out can still ask for the rollback.
		r = create(spec)
		if _, err := h.svc.Cancel(h.ctx, r.ID, "ann", false); err != nil {
			t.Fatal(err)
		}
		if c, err := h.svc.Cancel(h.ctx, r.ID, "ann", true); err != nil || !c.Rollback {
			t.Errorf("Cancel with rollback after a cancel = %+v, %v", c, err)
		}
	})
	t.Run("ended or aborted", func(t *testing.T) {
		spec := validSpec()
		spec.RollbackBundle = oldBundle
		for _, tc := range []struct {
			state string
			ended bool
		}{
			{StateCompleted, true}, {StateCanceled, true}, {StateAborted, true}, {StateAborted, false},
		} {
			r := setState(create(spec), tc.state, tc.ended)
			ops := map[string]func() (store.Rollout, error){
				"pause":                func() (store.Rollout, error) { return h.svc.Pause(h.ctx, r.ID, "ann") },
				"resume":               func() (store.Rollout, error) { return h.svc.Resume(h.ctx, r.ID, "ann") },
				"cancel with rollback": func() (store.Rollout, error) { return h.svc.Cancel(h.ctx, r.ID, "ann", true) },
			}
			if tc.state != StateCanceled {
				ops["cancel"] = func() (store.Rollout, error) { return h.svc.Cancel(h.ctx, r.ID, "ann", false) }
			}
			for name, op := range ops {
				got, err := op()
				if !errors.Is(err, ErrState) {
					t.Errorf("%s a %s rollout (ended %v) = %v, want ErrState", name, tc.state, tc.ended, err)
				}
				if got.Version != r.Version || got.State != tc.state {
					t.Errorf("%s a %s rollout changed it: %+v", name, tc.state, got)
				}
			}
		}
	})
	t.Run("unknown", func(t *testing.T) {
		for name, op := range map[string]func() (store.Rollout, error){
			"pause":  func() (store.Rollout, error) { return h.svc.Pause(h.ctx, "r-1", "ann") },
			"resume": func() (store.Rollout, error) { return h.svc.Resume(h.ctx, "r-1", "ann") },
			"cancel": func() (store.Rollout, error) { return h.svc.Cancel(h.ctx, "r-1", "ann", false) },
		} {
			if _, err := op(); !errors.Is(err, ErrNotFound) {
				t.Errorf("%s an unknown rollout = %v, want ErrNotFound", name, err)
			}
		}
	})
}

func TestWatch(t *testing.T) {
	h := newServiceHarness(t)
	r, err := h.svc.Create(h.ctx, validSpec(), "op")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen []string
	)
	done := make(chan error, 1)
	go func() {
		done <- h.svc.Watch(h.ctx, r.ID, func(r store.Rollout) error {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, r.State)
			return nil
		})
	}()
	waitFor(t, "the first send", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 1 })
	if _, err := h.svc.Pause(h.ctx, r.ID, "ann"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the pause", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 2 })
	cur, _ := h.db.GetRollout(h.ctx, r.ID)
	next := cur
	next.Version, next.State, next.EndedAt = cur.Version+1, StateCanceled, h.clk.Now()
	if _, err := h.db.UpdateRollout(h.ctx, cur.Version, next, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Watch = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after the rollout ended")
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]string{StateRunning, StatePaused, StateCanceled}, seen); diff != "" {
		t.Errorf("Watch sent (-want +got):\n%s", diff)
	}

	stop := errors.New("stop")
	if err := h.svc.Watch(h.ctx, r.ID, func(store.Rollout) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Watch with a failing send = %v", err)
	}
	if err := h.svc.Watch(h.ctx, "r-1", func(store.Rollout) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("Watch(unknown) = %v", err)
	}
}

// waitFor polls cond for up to five seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
