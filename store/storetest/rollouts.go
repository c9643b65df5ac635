package storetest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/store"
)

// RolloutStore is what the rollout controller needs of a backend.
type RolloutStore interface {
	store.Rollouts
	store.Leases
}

// RunRollouts runs the conformance suite of store.Rollouts and store.Leases
// against the stores newStore returns (fresh and empty for each subtest;
// newStore arranges their closing). The subtests run in parallel; a few
// wait for short leases to expire.
func RunRollouts(t *testing.T, newStore func(t *testing.T) RolloutStore) {
	tests := []struct {
		name string
		run  func(t *testing.T, s RolloutStore)
	}{
		{"CreateAndGet", testRolloutCreateAndGet},
		{"ListNewestFirst", testRolloutList},
		{"CompareAndSet", testRolloutCompareAndSet},
		{"ConcurrentUpdates", testRolloutConcurrentUpdates},
		{"FencedWrites", testFencedWrites},
		{"Executions", testExecutions},
		{"Lease", testLease},
		{"LeaseExpiry", testLeaseExpiry},
		{"LeaseTokensGrow", testLeaseTokensGrow},
		{"LeaseRace", testLeaseRace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // the lease subtests mostly wait
			tt.run(t, newStore(t))
		})
	}
}

// shortTTL is the lease time of the subtests that wait for a lease to
// lapse; they sleep expireWait to be sure it did.
const (
	shortTTL   = 300 * time.Millisecond
	expireWait = shortTTL + 150*time.Millisecond
)

func rollout(id string) store.Rollout {
	utc := at.UTC()
	return store.Rollout{
		ID: id,
		Spec: store.RolloutSpec{
			Name:          "spring " + id,
			Bundle:        store.Bundle{TargetPath: "fw-2.bin", Length: 2048, SHA256: "ab12"},
			Labels:        map[string]string{"model": "gw2"},
			Waves:         []store.WaveSpec{{Count: 1}, {Percent: 10}, {Percent: 100}},
			MaxInFlight:   50,
			DeviceTimeout: 30 * time.Minute,
			Retries:       2,
			Soak:          time.Hour,
			Abort:         []store.AbortRule{{Status: "FAILED", Percent: 5, MinExecutions: 20}},
			Window: &store.Window{Start: "02:00", Duration: 3 * time.Hour,
				Days: []time.Weekday{time.Monday, time.Saturday}, Location: "Europe/Paris"},
			Consent: &store.ConsentPolicy{BeforeInstall: true, BeforeReboot: true, MaxDeferral: 72 * time.Hour},
		},
		State:     "PENDING",
		CreatedBy: "operator:dev",
		CreatedAt: utc,
		UpdatedAt: utc,
	}
}

// step returns r advanced by one version, in state.
func step(r store.Rollout, state string) store.Rollout {
	r.Version++
	r.State = state
	r.UpdatedAt = r.UpdatedAt.Add(time.Minute)
	if state == "RUNNING" {
		r.StartedAt = r.UpdatedAt
		r.Waves = []store.WaveProgress{{Size: 1, State: "RUNNING", StartedAt: r.UpdatedAt}, {Size: 10, State: "PENDING"}}
		r.Counts = map[string]uint64{"PENDING": 10, "DOWNLOADING": 1}
		r.Rate = 1.5
	}
	return r
}

func mustCreateRollout(t *testing.T, s RolloutStore, id string) store.Rollout {
	t.Helper()
	r, err := s.CreateRollout(context.Background(), rollout(id))
	if err != nil {
		t.Fatalf("CreateRollout(%q): %v", id, err)
	}
	return r
}

func mustGetRollout(t *testing.T, s RolloutStore, id string) store.Rollout {
	t.Helper()
	r, err := s.GetRollout(context.Background(), id)
	if err != nil {
		t.Fatalf("GetRollout(%q): %v", id, err)
	}
	return r
}

func testRolloutCreateAndGet(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	in := rollout("r-1")
	in.Version = 7 // ignored: a new rollout is at version 1
	got, err := s.CreateRollout(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	want := rollout("r-1")
	want.Version = 1
	if diff := cmp.Diff(want, got, equalTime); diff != "" {
		t.Errorf("CreateRollout (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, mustGetRollout(t, s, "r-1"), equalTime); diff != "" {
		t.Errorf("GetRollout (-want +got):\n%s", diff)
	}

	// Repeating the create (a retry after a lost reply) is harmless.
	if _, err := s.CreateRollout(ctx, in); err != nil {
		t.Errorf("repeated CreateRollout = %v, want success", err)
	}
	other := rollout("r-1")
	other.Spec.Name = "another"
	if _, err := s.CreateRollout(ctx, other); !errors.Is(err, store.ErrExists) {
		t.Errorf("CreateRollout of a taken id = %v, want ErrExists", err)
	}
	// Once the rollout moved on, the first create is a different document.
	if _, err := s.UpdateRollout(ctx, 1, step(want, "RUNNING"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateRollout(ctx, in); !errors.Is(err, store.ErrExists) {
		t.Errorf("CreateRollout of an updated rollout = %v, want ErrExists", err)
	}
	if got := mustGetRollout(t, s, "r-1"); got.Version != 2 || got.Spec.Name != want.Spec.Name {
		t.Errorf("a refused create changed the rollout: version %d, name %q", got.Version, got.Spec.Name)
	}

	if _, err := s.GetRollout(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRollout(missing) = %v, want ErrNotFound", err)
	}
}

func testRolloutList(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	ids := []string{"r-01", "r-02", "r-03", "r-04", "r-05"}
	for _, i := range rand.Perm(len(ids)) {
		mustCreateRollout(t, s, ids[i])
	}
	tests := []struct {
		before string
		limit  int
		want   []string
	}{
		{"", 2, []string{"r-05", "r-04"}},
		{"r-04", 2, []string{"r-03", "r-02"}},
		{"r-02", 2, []string{"r-01"}},
		{"r-01", 2, nil},
		{"", 10, []string{"r-05", "r-04", "r-03", "r-02", "r-01"}},
		{"r-035", 10, []string{"r-03", "r-02", "r-01"}}, // before needs not exist
		{"s", 1, []string{"r-05"}},                      // past the newest
		{"a", 10, nil},                                  // before the oldest
	}
	for _, tt := range tests {
		got, err := s.ListRollouts(ctx, tt.before, tt.limit)
		if err != nil {
			t.Fatalf("ListRollouts(%q, %d): %v", tt.before, tt.limit, err)
		}
		var gotIDs []string
		for _, r := range got {
			gotIDs = append(gotIDs, r.ID)
			if r.Version != 1 || r.Spec.Name != "spring "+r.ID {
				t.Errorf("ListRollouts(%q, %d): %q is not its stored document: %+v", tt.before, tt.limit, r.ID, r)
			}
		}
		if diff := cmp.Diff(tt.want, gotIDs); diff != "" {
			t.Errorf("ListRollouts(%q, %d) ids (-want +got):\n%s", tt.before, tt.limit, diff)
		}
	}
}

func testRolloutCompareAndSet(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	v1 := mustCreateRollout(t, s, "r-1")
	v2 := step(v1, "RUNNING")
	v3 := step(v2, "PAUSED")
	stale := step(v2, "CANCELED") // version 3 too, from version 2
	missing := step(rollout("nope"), "RUNNING")
	missing.Version = 2
	steps := []struct {
		name    string
		expect  uint64
		doc     store.Rollout
		wantErr error
		want    store.Rollout // the stored rollout afterwards
	}{
		{"first write", 1, v2, nil, v2},
		{"repeat of the first write", 1, v2, nil, v2},
		{"next write", 2, v3, nil, v3},
		{"stale expect", 2, stale, store.ErrConflict, v3},
		{"expect ahead", 5, step(step(step(v3, "A"), "B"), "C"), store.ErrConflict, v3},
		{"version skips", 3, step(step(v3, "A"), "B"), errAny, v3},
		{"version stays", 3, v3, errAny, v3},
		{"missing", 1, missing, store.ErrNotFound, v3},
	}
	for _, st := range steps {
		got, err := s.UpdateRollout(ctx, st.expect, st.doc, 0)
		switch {
		case st.wantErr == nil && err != nil:
			t.Errorf("%s: UpdateRollout = %v", st.name, err)
		case st.wantErr == errAny && err == nil:
			t.Errorf("%s: UpdateRollout succeeded, want an error", st.name)
		case st.wantErr != nil && st.wantErr != errAny && !errors.Is(err, st.wantErr):
			t.Errorf("%s: UpdateRollout error = %v, want %v", st.name, err, st.wantErr)
		}
		if st.wantErr == nil || st.wantErr == store.ErrConflict {
			// A success returns the written rollout; a conflict the stored one.
			if diff := cmp.Diff(st.want, got, equalTime); diff != "" {
				t.Errorf("%s: UpdateRollout returned (-want +got):\n%s", st.name, diff)
			}
		}
		if diff := cmp.Diff(st.want, mustGetRollout(t, s, "r-1"), equalTime); diff != "" {
			t.Errorf("%s: stored rollout (-want +got):\n%s", st.name, diff)
		}
	}
}

func testRolloutConcurrentUpdates(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	v1 := mustCreateRollout(t, s, "r-1")
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []string
	)
	for i := range 16 {
		wg.Go(func() {
			r := step(v1, fmt.Sprintf("S%d", i))
			_, err := s.UpdateRollout(ctx, 1, r, 0)
			switch {
			case err == nil:
				mu.Lock()
				wins = append(wins, r.State)
				mu.Unlock()
			case !errors.Is(err, store.ErrConflict):
				t.Errorf("UpdateRollout: %v", err)
			}
		})
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("%d writers updated version 1, want 1: %v", len(wins), wins)
	}
	if got := mustGetRollout(t, s, "r-1"); got.Version != 2 || got.State != wins[0] {
		t.Errorf("stored version %d state %q, want 2 %q", got.Version, got.State, wins[0])
	}
}

func execution(device, status string) store.Execution {
	return store.Execution{DeviceID: device, Wave: 1, Status: status, JobID: "job-" + device,
		DesiredVersion: 3, Attempts: 1, DispatchedAt: at.UTC(), Message: "m",
		ConsentSince: at.UTC().Add(time.Minute), ConsentWaited: 90 * time.Second}
}

func mustListExecutions(t *testing.T, s RolloutStore, id string) []store.Execution {
	t.Helper()
	got, err := s.ListExecutions(context.Background(), id)
	if err != nil {
		t.Fatalf("ListExecutions(%q): %v", id, err)
	}
	return got
}

func testFencedWrites(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	v1 := mustCreateRollout(t, s, "r-1")
	a, err := s.AcquireLease(ctx, store.RolloutLease, "ferryd-a", shortTTL)
	if err != nil {
		t.Fatal(err)
	}
	v2 := step(v1, "RUNNING")
	if _, err := s.UpdateRollout(ctx, 1, v2, a); err != nil {
		t.Fatalf("UpdateRollout with the current token: %v", err)
	}
	if err := s.PutExecutions(ctx, "r-1", a, []store.Execution{execution("d1", "PENDING")}); err != nil {
		t.Fatalf("PutExecutions with the current token: %v", err)
	}
	if _, err := s.UpdateRollout(ctx, 2, step(v2, "X"), a+1); !errors.Is(err, store.ErrFenced) {
		t.Errorf("UpdateRollout with a token never issued = %v, want ErrFenced", err)
	}

	// The lease lapses; until someone takes it, a's token is stale too.
	time.Sleep(expireWait)
	if _, err := s.UpdateRollout(ctx, 2, step(v2, "X"), a); !errors.Is(err, store.ErrFenced) {
		t.Errorf("UpdateRollout after the lease lapsed = %v, want ErrFenced", err)
	}

	// b takes over; a's writes are refused and change nothing.
	b, err := s.AcquireLease(ctx, store.RolloutLease, "ferryd-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if b <= a {
		t.Fatalf("token of the new holder %d, want more than %d", b, a)
	}
	if _, err := s.UpdateRollout(ctx, 2, step(v2, "STALE"), a); !errors.Is(err, store.ErrFenced) {
		t.Errorf("UpdateRollout with a stale token = %v, want ErrFenced", err)
	}
	if err := s.PutExecutions(ctx, "r-1", a, []store.Execution{execution("d1", "FAILED"), execution("d2", "FAILED")}); !errors.Is(err, store.ErrFenced) {
		t.Errorf("PutExecutions with a stale token = %v, want ErrFenced", err)
	}
	if diff := cmp.Diff(v2, mustGetRollout(t, s, "r-1"), equalTime); diff != "" {
		t.Errorf("a fenced update changed the rollout (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]store.Execution{execution("d1", "PENDING")}, mustListExecutions(t, s, "r-1"), equalTime); diff != "" {
		t.Errorf("a fenced put changed the executions (-want +got):\n%s", diff)
	}

	// The current token and no token (an operator's compare-and-set) pass.
	v3 := step(v2, "PAUSED")
	if _, err := s.UpdateRollout(ctx, 2, v3, b); err != nil {
		t.Errorf("UpdateRollout with the current token: %v", err)
	}
	if err := s.PutExecutions(ctx, "r-1", b, []store.Execution{execution("d2", "PENDING")}); err != nil {
		t.Errorf("PutExecutions with the current token: %v", err)
	}
	v4 := step(v3, "RUNNING")
	if _, err := s.UpdateRollout(ctx, 3, v4, 0); err != nil {
		t.Errorf("UpdateRollout without a token: %v", err)
	}
	if err := s.PutExecutions(ctx, "r-1", 0, []store.Execution{execution("d3", "PENDING")}); err != nil {
		t.Errorf("PutExecutions without a token: %v", err)
	}
	if got := mustGetRollout(t, s, "r-1"); got.Version != 4 {
		t.Errorf("stored version %d, want 4", got.Version)
	}
	if n := len(mustListExecutions(t, s, "r-1")); n != 3 {
		t.Errorf("%d executions stored, want 3", n)
	}

	// Once b lets go, its token is stale as well.
	if err := s.ReleaseLease(ctx, store.RolloutLease, "ferryd-b"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateRollout(ctx, 4, step(v4, "X"), b); !errors.Is(err, store.ErrFenced) {
		t.Errorf("UpdateRollout after the release = %v, want ErrFenced", err)
	}
	// Only the lease named store.RolloutLease fences rollout writes.
	other, err := s.AcquireLease(ctx, "other-duty", "ferryd-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutExecutions(ctx, "r-1", other, []store.Execution{execution("d4", "PENDING")}); !errors.Is(err, store.ErrFenced) {
		t.Errorf("PutExecutions with another lease's token = %v, want ErrFenced", err)
	}
}

func testExecutions(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	mustCreateRollout(t, s, "r-1")
	mustCreateRollout(t, s, "r-2")
	if got := mustListExecutions(t, s, "r-1"); len(got) != 0 {
		t.Errorf("executions of a new rollout: %+v", got)
	}
	if got, err := s.ListExecutions(ctx, "nope"); err != nil || len(got) != 0 {
		t.Errorf("ListExecutions(unknown) = %+v, %v; want none, no error", got, err)
	}

	put := func(id string, execs ...store.Execution) {
		t.Helper()
		if err := s.PutExecutions(ctx, id, 0, execs); err != nil {
			t.Fatalf("PutExecutions(%q): %v", id, err)
		}
	}
	put("r-1", execution("dev-c", "PENDING"), execution("dev-a", "PENDING"))
	put("r-2", execution("dev-z", "PENDING"))
	a2 := execution("dev-a", "SUCCEEDED")
	a2.Attempts, a2.SucceededAt, a2.EndedAt, a2.Message = 2, at.UTC().Add(time.Minute), at.UTC().Add(time.Minute), ""
	for range 2 { // a repeated put is harmless
		put("r-1", execution("dev-b", "DOWNLOADING"), a2)
	}
	put("r-1") // nothing to put
	want := []store.Execution{a2, execution("dev-b", "DOWNLOADING"), execution("dev-c", "PENDING")}
	if diff := cmp.Diff(want, mustListExecutions(t, s, "r-1"), equalTime); diff != "" {
		t.Errorf("ListExecutions (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]store.Execution{execution("dev-z", "PENDING")}, mustListExecutions(t, s, "r-2"), equalTime); diff != "" {
		t.Errorf("ListExecutions of another rollout (-want +got):\n%s", diff)
	}

	// All or none: one bad execution, and none is stored.
	if err := s.PutExecutions(ctx, "r-1", 0, []store.Execution{execution("dev-d", "PENDING"), {Status: "PENDING"}}); err == nil {
		t.Error("PutExecutions with an execution without device id succeeded")
	}
	if diff := cmp.Diff(want, mustListExecutions(t, s, "r-1"), equalTime); diff != "" {
		t.Errorf("a refused put changed the executions (-want +got):\n%s", diff)
	}
	if err := s.PutExecutions(ctx, "nope", 0, []store.Execution{execution("dev-a", "PENDING")}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("PutExecutions of an unknown rollout = %v, want ErrNotFound", err)
	}

	// Many at once, listed in device-id order.
	var many []store.Execution
	for _, i := range rand.Perm(2500) {
		many = append(many, execution(fmt.Sprintf("m-%05d", i), "PENDING"))
	}
	mustCreateRollout(t, s, "r-3")
	put("r-3", many...)
	got := mustListExecutions(t, s, "r-3")
	if len(got) != len(many) {
		t.Fatalf("%d executions listed, want %d", len(got), len(many))
	}
	for i, e := range got {
		if want := fmt.Sprintf("m-%05d", i); e.DeviceID != want {
			t.Fatalf("execution %d is %q, want %q", i, e.DeviceID, want)
		}
	}
}

func testLease(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	a, err := s.AcquireLease(ctx, "duty", "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if a == 0 {
		t.Fatal("AcquireLease returned token 0")
	}
	if again, err := s.AcquireLease(ctx, "duty", "a", time.Minute); err != nil || again != a {
		t.Errorf("renewal = %d, %v; want the same token %d", again, err, a)
	}
	if _, err := s.AcquireLease(ctx, "duty", "b", time.Minute); !errors.Is(err, store.ErrLeaseHeld) {
		t.Errorf("AcquireLease of a held lease = %v, want ErrLeaseHeld", err)
	}
	// Leases are independent by name.
	if _, err := s.AcquireLease(ctx, "other-duty", "b", time.Minute); err != nil {
		t.Errorf("AcquireLease of another lease: %v", err)
	}
	// Only the holder lets go.
	if err := s.ReleaseLease(ctx, "duty", "b"); err != nil {
		t.Errorf("ReleaseLease by a non-holder = %v, want no error", err)
	}
	if _, err := s.AcquireLease(ctx, "duty", "b", time.Minute); !errors.Is(err, store.ErrLeaseHeld) {
		t.Errorf("AcquireLease after a non-holder's release = %v, want ErrLeaseHeld", err)
	}
	for range 2 { // repeating a release is harmless
		if err := s.ReleaseLease(ctx, "duty", "a"); err != nil {
			t.Fatal(err)
		}
	}
	b, err := s.AcquireLease(ctx, "duty", "b", time.Minute)
	if err != nil {
		t.Fatalf("AcquireLease after the release: %v", err)
	}
	if b <= a {
		t.Errorf("token after a change of hands %d, want more than %d", b, a)
	}
	if err := s.ReleaseLease(ctx, "never-taken", "a"); err != nil {
		t.Errorf("ReleaseLease of a lease never taken = %v, want no error", err)
	}
}

func testLeaseExpiry(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	a, err := s.AcquireLease(ctx, "duty", "a", shortTTL)
	if err != nil {
		t.Fatal(err)
	}
	// Renewing extends the lease from now: past the first ttl it still holds.
	time.Sleep(shortTTL / 2)
	if again, err := s.AcquireLease(ctx, "duty", "a", shortTTL); err != nil || again != a {
		t.Fatalf("renewal = %d, %v; want the same token %d", again, err, a)
	}
	time.Sleep(shortTTL / 2)
	if _, err := s.AcquireLease(ctx, "duty", "b", shortTTL); !errors.Is(err, store.ErrLeaseHeld) {
		t.Errorf("AcquireLease of a renewed lease = %v, want ErrLeaseHeld", err)
	}
	// Once it lapses, anyone takes it with a new token.
	time.Sleep(expireWait)
	b, err := s.AcquireLease(ctx, "duty", "b", shortTTL)
	if err != nil {
		t.Fatalf("AcquireLease of a lapsed lease: %v", err)
	}
	if b <= a {
		t.Errorf("token after expiry %d, want more than %d", b, a)
	}
	// A lapsed holder that takes its lease back gets a new token too: its
	// writes under the old one may have been refused meanwhile.
	time.Sleep(expireWait)
	b2, err := s.AcquireLease(ctx, "duty", "b", shortTTL)
	if err != nil {
		t.Fatal(err)
	}
	if b2 <= b {
		t.Errorf("token after the holder's own lease lapsed %d, want more than %d", b2, b)
	}
	// A lapsed lease cannot be released by its former holder from under
	// the next one.
	time.Sleep(expireWait)
	c, err := s.AcquireLease(ctx, "duty", "c", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLease(ctx, "duty", "b"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.AcquireLease(ctx, "duty", "c", time.Minute); err != nil || got != c {
		t.Errorf("renewal after a former holder's release = %d, %v; want %d", got, err, c)
	}
}

func testLeaseTokensGrow(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	var last uint64
	for i := range 6 {
		holder := []string{"a", "a", "b"}[i%3] // even the same holder, after a release
		f, err := s.AcquireLease(ctx, "duty", holder, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if f <= last {
			t.Errorf("take %d: token %d, want more than %d", i, f, last)
		}
		last = f
		if err := s.ReleaseLease(ctx, "duty", holder); err != nil {
			t.Fatal(err)
		}
	}
}

func testLeaseRace(t *testing.T, s RolloutStore) {
	ctx := context.Background()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		holders []string
		fences  = map[uint64]bool{}
	)
	for i := range 16 {
		wg.Go(func() {
			holder := fmt.Sprintf("ferryd-%d", i)
			f, err := s.AcquireLease(ctx, "duty", holder, time.Minute)
			switch {
			case err == nil:
				mu.Lock()
				holders = append(holders, holder)
				fences[f] = true
				mu.Unlock()
			case !errors.Is(err, store.ErrLeaseHeld):
				t.Errorf("AcquireLease: %v", err)
			}
		})
	}
	wg.Wait()
	if len(holders) != 1 || len(fences) != 1 {
		t.Errorf("%d instances took one lease (tokens %v), want 1", len(holders), fences)
	}
}
