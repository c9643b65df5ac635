// Package storetest is the conformance suite every store backend passes.
//
// A backend's test calls Run with a function that returns a fresh, empty
// store for each subtest. Every time in the suite derives from
// internal/testclock, and a backend with a wall clock of its own (SetClock)
// must be given testclock.Now, so that the suite passes on any date and
// with the test clock moved (FERRY_TEST_CLOCK_SHIFT).
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/store"
)

// Run runs the conformance suite against the stores newStore returns.
func Run(t *testing.T, newStore func(t *testing.T) store.Devices) {
	tests := []struct {
		name string
		run  func(t *testing.T, s store.Devices)
	}{
		{"CreateAndGet", testCreateAndGet},
		{"CreateIsIdempotent", testCreateIsIdempotent},
		{"GetMissing", testGetMissing},
		{"CompareAndSet", testCompareAndSet},
		{"RepeatedWriteIsHarmless", testRepeatedWrite},
		{"DesiredAndReportedAreIndependent", testIndependentVersions},
		{"ListPages", testListPages},
		{"ConcurrentWriters", testConcurrentWriters},
		{"EventsGoWithWrites", testEvents},
		{"EventHistoryIsCapped", testEventCap},
		{"Attestations", testAttestations},
		{"Changes", testChanges},
		{"MarkSeen", testMarkSeen},
		{"QueryAndSummary", testQueryAndSummary},
		{"ListManyPages", testListManyPages},
		{"SummaryAfterManyWrites", testSummaryAfterManyWrites},
		{"ClaimsAreNotIndexed", testClaimsAreNotIndexed},
		{"Selectors", testSelectors},
		{"Attributes", testAttributes},
		{"DesiredBatch", testDesiredBatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			t.Cleanup(func() { s.Close() })
			tt.run(t, s)
		})
	}
}

// at is the suite's start on the test clock, in a non-UTC zone and with
// nanoseconds, to catch backends that lose zones or precision.
var at = testclock.Start().Add(123456789 * time.Nanosecond).In(time.FixedZone("CET", 3600))

func newDevice(id string) store.Device {
	return store.Device{ID: id, Labels: map[string]string{"model": "gw2"}, CreatedAt: at}
}

func desired(version uint64, target string) store.Desired {
	return store.Desired{
		Version: version,
		JobID:   fmt.Sprintf("job-%d", version),
		Bundle:  store.Bundle{TargetPath: target, Length: 1024, SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
		Config:  map[string]string{"log.level": "debug"},
		Consent: &store.ConsentPolicy{BeforeReboot: true, MaxDeferral: time.Hour},
		SetBy:   "operator:dev",
		SetAt:   at,
		// Each version its own span, as ferryd traces writes.
		TraceParent: fmt.Sprintf("00-4bf92f3577b34da6a3ce929d0e0e4736-%016x-01", version),
	}
}

func reported(version, answers uint64) store.Reported {
	return store.Reported{
		Version:        version,
		DesiredVersion: answers,
		Bundle:         store.Bundle{TargetPath: "fw-1.bin", Length: 1024, SHA256: "ab"},
		AgentVersion:   "ferry-agent/test",
		ReportedAt:     at,
		Job:            store.Job{ID: "job-1", DesiredVersion: answers, Status: "SUCCEEDED", UpdatedAt: at},
	}
}

func mustCreate(t *testing.T, s store.Devices, id string) store.Device {
	t.Helper()
	d, _, err := s.CreateDevice(context.Background(), newDevice(id))
	if err != nil {
		t.Fatalf("CreateDevice(%q): %v", id, err)
	}
	return d
}

// equalTime compares instants, not representations.
var equalTime = cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })

func testCreateAndGet(t *testing.T, s store.Devices) {
	ctx := context.Background()
	in := newDevice("dev-1")
	in.Desired.Version, in.Reported.Version = 7, 9 // ignored: new devices start at 0
	created, ok, err := s.CreateDevice(ctx, in)
	if err != nil || !ok {
		t.Fatalf("CreateDevice = %v, %v; want created", ok, err)
	}
	want := newDevice("dev-1")
	if diff := cmp.Diff(want, created, equalTime); diff != "" {
		t.Errorf("created device (-want +got):\n%s", diff)
	}
	got, err := s.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, equalTime); diff != "" {
		t.Errorf("GetDevice (-want +got):\n%s", diff)
	}
}

func testCreateIsIdempotent(t *testing.T, s store.Devices) {
	ctx := context.Background()
	mustCreate(t, s, "dev-1")
	if _, err := s.SetDesired(ctx, "dev-1", 0, desired(1, "fw-2.bin"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	again := newDevice("dev-1")
	again.Labels = map[string]string{"model": "other"}
	got, created, err := s.CreateDevice(ctx, again)
	if err != nil {
		t.Fatal(err)
	}
	if created {
		t.Error("second CreateDevice reported created")
	}
	if got.Labels["model"] != "gw2" || got.Desired.Version != 1 {
		t.Errorf("second CreateDevice changed the device: %+v", got)
	}
}

func testGetMissing(t *testing.T, s store.Devices) {
	ctx := context.Background()
	if _, err := s.GetDevice(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetDevice(missing) = %v, want ErrNotFound", err)
	}
	if _, err := s.SetDesired(ctx, "nope", 0, desired(1, "x"), store.Write{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetDesired(missing) = %v, want ErrNotFound", err)
	}
	if _, err := s.SetReported(ctx, "nope", 0, reported(1, 1), store.Write{}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetReported(missing) = %v, want ErrNotFound", err)
	}
}

func testCompareAndSet(t *testing.T, s store.Devices) {
	ctx := context.Background()
	mustCreate(t, s, "dev-1")
	steps := []struct {
		name    string
		expect  uint64
		doc     store.Desired
		wantErr error
		wantVer uint64
	}{
		{"first write", 0, desired(1, "fw-1.bin"), nil, 1},
		{"next write", 1, desired(2, "fw-2.bin"), nil, 2},
		{"stale expect", 1, desired(2, "fw-3.bin"), store.ErrConflict, 2},
		{"expect ahead", 5, desired(6, "fw-3.bin"), store.ErrConflict, 2},
		{"version skips", 2, desired(4, "fw-3.bin"), errAny, 2},
	}
	for _, st := range steps {
		got, err := s.SetDesired(ctx, "dev-1", st.expect, st.doc, store.Write{})
		switch {
		case st.wantErr == errAny && err == nil:
			t.Errorf("%s: SetDesired succeeded, want an error", st.name)
		case st.wantErr != errAny && !errors.Is(err, st.wantErr):
			t.Errorf("%s: SetDesired error = %v, want %v", st.name, err, st.wantErr)
		}
		if st.wantErr == store.ErrConflict && got.Desired.Version != st.wantVer {
			t.Errorf("%s: conflict returned version %d, want the current %d", st.name, got.Desired.Version, st.wantVer)
		}
		cur, err := s.GetDevice(ctx, "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		if cur.Desired.Version != st.wantVer {
			t.Errorf("%s: stored version %d, want %d", st.name, cur.Desired.Version, st.wantVer)
		}
	}
	cur, _ := s.GetDevice(ctx, "dev-1")
	if diff := cmp.Diff(desired(2, "fw-2.bin"), cur.Desired, equalTime); diff != "" {
		t.Errorf("a refused write changed the document (-want +got):\n%s", diff)
	}
}

// timeMinutes is n minutes.
func timeMinutes(n int) time.Duration { return time.Duration(n) * time.Minute }

// errAny stands for "some error" in tables.
var errAny = errors.New("any error")

func testRepeatedWrite(t *testing.T, s store.Devices) {
	ctx := context.Background()
	mustCreate(t, s, "dev-1")
	for i := range 2 {
		d, err := s.SetDesired(ctx, "dev-1", 0, desired(1, "fw-1.bin"), store.Write{})
		if err != nil {
			t.Fatalf("SetDesired #%d: %v", i+1, err)
		}
		if d.Desired.Version != 1 {
			t.Errorf("SetDesired #%d: version %d, want 1", i+1, d.Desired.Version)
		}
	}
	for i := range 2 {
		d, err := s.SetReported(ctx, "dev-1", 0, reported(1, 1), store.Write{})
		if err != nil {
			t.Fatalf("SetReported #%d: %v", i+1, err)
		}
		if d.Reported.Version != 1 {
			t.Errorf("SetReported #%d: version %d, want 1", i+1, d.Reported.Version)
		}
	}
	// The same expected version with other content is a conflict, not a repeat.
	if _, err := s.SetDesired(ctx, "dev-1", 0, desired(1, "other.bin"), store.Write{}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("different write at a used version = %v, want ErrConflict", err)
	}
	got, _ := s.GetDevice(ctx, "dev-1")
	if diff := cmp.Diff(desired(1, "fw-1.bin"), got.Desired, equalTime); diff != "" {
		t.Errorf("desired after repeats (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(reported(1, 1), got.Reported, equalTime); diff != "" {
		t.Errorf("reported after repeats (-want +got):\n%s", diff)
	}
}

func testIndependentVersions(t *testing.T, s store.Devices) {
	ctx := context.Background()
	mustCreate(t, s, "dev-1")
	if _, err := s.SetDesired(ctx, "dev-1", 0, desired(1, "a"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDesired(ctx, "dev-1", 1, desired(2, "b"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	d, err := s.SetReported(ctx, "dev-1", 0, reported(1, 2), store.Write{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Desired.Version != 2 || d.Reported.Version != 1 || d.Desired.Bundle.TargetPath != "b" {
		t.Errorf("after SetReported: desired v%d %q, reported v%d; want desired v2 \"b\", reported v1",
			d.Desired.Version, d.Desired.Bundle.TargetPath, d.Reported.Version)
	}
}

func testListPages(t *testing.T, s store.Devices) {
	ctx := context.Background()
	var want []string
	for i := range 25 {
		id := fmt.Sprintf("dev-%02d", 24-i) // created out of order
		mustCreate(t, s, id)
	}
	for i := range 25 {
		want = append(want, fmt.Sprintf("dev-%02d", i))
	}
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("ListDevices does not end")
		}
		page, err := s.ListDevices(ctx, store.ListOptions{After: after, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 10 {
			t.Fatalf("page of %d devices, limit 10", len(page))
		}
		for _, d := range page {
			got = append(got, d.ID)
		}
		if len(page) < 10 {
			break
		}
		after = page[len(page)-1].ID
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("listed ids (-want +got):\n%s", diff)
	}
	if _, err := s.ListDevices(ctx, store.ListOptions{Limit: 0}); err == nil {
		t.Error("ListDevices with limit 0 succeeded")
	}
}

// testConcurrentWriters runs read-modify-write loops from many goroutines on
// one device: compare-and-set must neither lose an update nor apply one twice.
func testConcurrentWriters(t *testing.T, s store.Devices) {
	ctx := context.Background()
	mustCreate(t, s, "dev-1")
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for done := 0; done < each; {
				cur, err := s.GetDevice(ctx, "dev-1")
				if err != nil {
					errs <- err
					return
				}
				next := desired(cur.Desired.Version+1, fmt.Sprintf("w%d-%d", w, done))
				_, err = s.SetDesired(ctx, "dev-1", cur.Desired.Version, next, store.Write{})
				switch {
				case err == nil:
					done++
				case !errors.Is(err, store.ErrConflict):
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := s.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.Desired.Version != writers*each {
		t.Errorf("desired version %d after %d successful writes", got.Desired.Version, writers*each)
	}
}

// Bench runs the store benchmarks against the stores newStore returns.
func Bench(b *testing.B, newStore func(b *testing.B) store.Devices) {
	ctx := context.Background()
	b.Run("GetDevice", func(b *testing.B) {
		s := newStore(b)
		defer s.Close()
		if _, _, err := s.CreateDevice(ctx, newDevice("dev-1")); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.GetDevice(ctx, "dev-1"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("SetDesired", func(b *testing.B) {
		s := newStore(b)
		defer s.Close()
		if _, _, err := s.CreateDevice(ctx, newDevice("dev-1")); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		v := uint64(0)
		for b.Loop() {
			if _, err := s.SetDesired(ctx, "dev-1", v, desired(v+1, "fw.bin"), store.Write{}); err != nil {
				b.Fatal(err)
			}
			v++
		}
	})
	b.Run("SetReportedParallel", func(b *testing.B) {
		// Many devices reporting at once, one writer per device.
		s := newStore(b)
		defer s.Close()
		var next atomic.Int64
		b.ReportAllocs()
		b.SetParallelism(8) // 8 writers per core
		b.RunParallel(func(pb *testing.PB) {
			id := fmt.Sprintf("dev-%d", next.Add(1))
			if _, _, err := s.CreateDevice(ctx, newDevice(id)); err != nil {
				b.Error(err)
				return
			}
			v := uint64(0)
			for pb.Next() {
				if _, err := s.SetReported(ctx, id, v, reported(v+1, 1), store.Write{}); err != nil {
					b.Error(err)
					return
				}
				v++
			}
		})
	})
}

func event(kind string, v uint64) store.Event {
	return store.Event{Time: at, Kind: kind, JobID: fmt.Sprintf("job-%d", v), DesiredVersion: v, Actor: "operator:dev"}
}

func testEvents(t *testing.T, s store.Devices) {
	ctx := context.Background()
	mustCreate(t, s, "dev-1")
	if evs, err := s.ListEvents(ctx, "dev-1", 0, 10); err != nil || len(evs) != 0 {
		t.Fatalf("events of a new device: %v, %v", evs, err)
	}
	if _, err := s.ListEvents(ctx, "nope", 0, 10); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("events of a missing device: %v, want ErrNotFound", err)
	}
	w1 := store.Write{Event: event("desired_set", 1)}
	for range 2 { // the repeat must not append again
		if _, err := s.SetDesired(ctx, "dev-1", 0, desired(1, "a"), w1); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SetReported(ctx, "dev-1", 0, reported(1, 1), store.Write{Event: event("job_ended", 1)}); err != nil {
		t.Fatal(err)
	}
	// A refused write appends nothing.
	if _, err := s.SetDesired(ctx, "dev-1", 0, desired(1, "b"), store.Write{Event: event("lost", 1)}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("conflicting write: %v", err)
	}
	if _, err := s.SetDesired(ctx, "dev-1", 1, desired(2, "c"), store.Write{}); err != nil { // no event
		t.Fatal(err)
	}
	if _, err := s.SetDesired(ctx, "dev-1", 2, desired(3, "d"), store.Write{Event: event("desired_set", 3)}); err != nil {
		t.Fatal(err)
	}
	evs, err := s.ListEvents(ctx, "dev-1", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Event{event("desired_set", 3), event("job_ended", 1), event("desired_set", 1)}
	for i := range want {
		want[i].Seq = uint64(3 - i)
	}
	if diff := cmp.Diff(want, evs, equalTime); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	older, err := s.ListEvents(ctx, "dev-1", 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want[1:2], older, equalTime); diff != "" {
		t.Errorf("events before 3, limit 1 (-want +got):\n%s", diff)
	}
	if none, err := s.ListEvents(ctx, "dev-1", 1, 10); err != nil || len(none) != 0 {
		t.Errorf("events before 1: %v, %v", none, err)
	}
}

func testEventCap(t *testing.T, s store.Devices) {
	ctx := context.Background()
	mustCreate(t, s, "dev-1")
	n := uint64(store.MaxEvents + 5)
	for v := uint64(1); v <= n; v++ {
		if _, err := s.SetDesired(ctx, "dev-1", v-1, desired(v, "a"), store.Write{Event: event("desired_set", v)}); err != nil {
			t.Fatal(err)
		}
	}
	var all []store.Event
	before := uint64(0)
	for {
		page, err := s.ListEvents(ctx, "dev-1", before, 30)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		before = page[len(page)-1].Seq
	}
	if len(all) != store.MaxEvents || all[0].Seq != n || all[len(all)-1].Seq != n-store.MaxEvents+1 {
		t.Errorf("kept %d events, seq %d..%d; want %d, %d..%d", len(all), all[0].Seq, all[len(all)-1].Seq,
			store.MaxEvents, n, n-store.MaxEvents+1)
	}
	for i, ev := range all {
		if ev.Seq != n-uint64(i) || ev.DesiredVersion != ev.Seq {
			t.Fatalf("event %d: seq %d, version %d", i, ev.Seq, ev.DesiredVersion)
		}
	}
}

func testAttestations(t *testing.T, s store.Devices) {
	ctx := context.Background()
	mustCreate(t, s, "dev-1")
	att := &store.Attestation{JobID: "job-1", Envelope: []byte(`{"payload":"x"}`), CertificateChain: [][]byte{{1, 2, 3}}}
	if _, err := s.GetAttestation(ctx, "dev-1", "job-1"); !errors.Is(err, store.ErrNoAttestation) {
		t.Errorf("before: %v, want ErrNoAttestation", err)
	}
	if _, err := s.GetAttestation(ctx, "nope", "job-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("missing device: %v, want ErrNotFound", err)
	}
	// A refused write stores nothing.
	if _, err := s.SetReported(ctx, "dev-1", 5, reported(6, 1), store.Write{Attestation: att}); !errors.Is(err, store.ErrConflict) {
		t.Fatal(err)
	}
	if _, err := s.GetAttestation(ctx, "dev-1", "job-1"); !errors.Is(err, store.ErrNoAttestation) {
		t.Errorf("after a refused write: %v, want ErrNoAttestation", err)
	}
	if _, err := s.SetReported(ctx, "dev-1", 0, reported(1, 1), store.Write{Attestation: att}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetAttestation(ctx, "dev-1", "job-1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(*att, got); diff != "" {
		t.Errorf("attestation (-want +got):\n%s", diff)
	}
}

// testChanges: notices are directed. A change of a device this instance
// holds is heard; one of a device nobody holds is not, unless a WatchAll is
// open; writes are announced by the store itself.
func testChanges(t *testing.T, s store.Devices) {
	ch, ok := s.(store.Changes)
	if !ok {
		t.Fatalf("%T does not implement store.Changes", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 100)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		close(ready)
		done <- ch.SubscribeChanges(ctx, func(id string) { got <- id })
	}()
	<-ready
	if err := ch.Hold(ctx, "dev-7"); err != nil {
		t.Fatal(err)
	}
	// Once the subscription is in place, it says so with AllChanged.
	select {
	case id := <-got:
		if id != store.AllChanged {
			t.Fatalf("first call with %q, want AllChanged", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no AllChanged within 10 s of subscribing")
	}
	if err := ch.PublishChange(ctx, "dev-7"); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != "dev-7" {
			t.Fatalf("heard %q, want dev-7", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no change notice within 10 s")
	}
	drain := func() {
		for {
			select {
			case <-got:
			case <-time.After(100 * time.Millisecond):
				return
			}
		}
	}
	drain()
	// waitFor reads notices until want is heard, and fails on unwanted.
	waitFor := func(want string, unwanted ...string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case id := <-got:
				for _, u := range unwanted {
					if id == u {
						t.Fatalf("heard %q, which this instance does not hold", id)
					}
				}
				if id == want {
					return
				}
			case <-deadline:
				t.Fatalf("no notice of %s", want)
			}
		}
	}
	// Writes of a held device are announced by the store itself.
	if err := ch.Hold(ctx, "dev-8"); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, s, "dev-8")
	waitFor("dev-8")
	if _, err := s.SetDesired(ctx, "dev-8", 0, desired(1, "a"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	waitFor("dev-8")
	// A device nobody holds: no notice (checked against a later notice of
	// a held device).
	mustCreate(t, s, "dev-9")
	if _, err := s.SetDesired(ctx, "dev-9", 0, desired(1, "a"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"dev-9", "dev-8"} { // in this order
		if err := ch.PublishChange(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("dev-8", "dev-9")
	// A released device is not announced here any more.
	if err := ch.Release(ctx, "dev-8"); err != nil {
		t.Fatal(err)
	}
	if err := ch.PublishChange(ctx, "dev-8"); err != nil {
		t.Fatal(err)
	}
	if err := ch.PublishChange(ctx, "dev-7"); err != nil {
		t.Fatal(err)
	}
	waitFor("dev-7", "dev-8")
	// While a fleet-wide watch is open, every device is announced.
	stop, err := ch.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDesired(ctx, "dev-9", 1, desired(2, "b"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	waitFor("dev-9")
	stop()
	drain()
	for _, id := range []string{"dev-9", "dev-7"} {
		if err := ch.PublishChange(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	waitFor("dev-7", "dev-9")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("SubscribeChanges: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("SubscribeChanges did not return after its context ended")
	}
}

func testQueryAndSummary(t *testing.T, s store.Devices) {
	ctx := context.Background()
	for id, labels := range map[string]map[string]string{
		"d1": {"model": "gw2", "ring": "canary"},
		"d2": {"model": "gw2"},
		"d3": {"model": "gw3"},
	} {
		if _, _, err := s.CreateDevice(ctx, store.Device{ID: id, Labels: labels, CreatedAt: at}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SetDesired(ctx, "d1", 0, desired(1, "fw-2"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	seen := at.Add(time.Hour)
	r := reported(1, 1)
	r.LastSeen = seen
	if _, err := s.SetReported(ctx, "d2", 0, r, store.Write{}); err != nil {
		t.Fatal(err)
	}
	list := func(q store.Query, limit int) []string {
		t.Helper()
		var ids []string
		after := ""
		for range 10 {
			page, err := s.ListDevices(ctx, store.ListOptions{After: after, Limit: limit, Query: q})
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range page {
				ids = append(ids, d.ID)
			}
			if len(page) < limit {
				break
			}
			after = page[len(page)-1].ID
		}
		return ids
	}
	tests := []struct {
		name string
		q    store.Query
		want []string
	}{
		{"all", store.Query{}, []string{"d1", "d2", "d3"}},
		{"queued", store.Query{Status: "QUEUED"}, []string{"d1"}},
		{"succeeded", store.Query{Status: "SUCCEEDED"}, []string{"d2"}},
		{"never given a job", store.Query{Status: store.StatusNone}, []string{"d3"}},
		{"running fw-1", store.Query{Bundle: "fw-1.bin"}, []string{"d2"}},
		{"running nothing", store.Query{Bundle: store.NoBundle}, []string{"d1", "d3"}},
		{"one label", store.Query{Labels: map[string]string{"model": "gw2"}}, []string{"d1", "d2"}},
		{"two labels", store.Query{Labels: map[string]string{"model": "gw2", "ring": "canary"}}, []string{"d1"}},
		{"label and status", store.Query{Labels: map[string]string{"model": "gw2"}, Status: "SUCCEEDED"}, []string{"d2"}},
		{"no match", store.Query{Labels: map[string]string{"model": "gw9"}}, nil},
		{"silent before the report", store.Query{SeenBefore: seen}, []string{"d1", "d3"}},
		{"silent after the report", store.Query{SeenBefore: seen.Add(time.Second)}, []string{"d1", "d2", "d3"}},
	}
	for _, tt := range tests {
		for _, limit := range []int{1, 10} {
			if diff := cmp.Diff(tt.want, list(tt.q, limit)); diff != "" {
				t.Errorf("%s, pages of %d (-want +got):\n%s", tt.name, limit, diff)
			}
		}
	}

	sum, err := s.Summary(ctx, seen)
	if err != nil {
		t.Fatal(err)
	}
	want := store.Summary{
		Total:     3,
		PerStatus: map[string]uint64{"QUEUED": 1, "SUCCEEDED": 1, store.StatusNone: 1},
		PerBundle: map[string]uint64{"fw-1.bin": 1, store.NoBundle: 2},
		Silent:    2,
	}
	if diff := cmp.Diff(want, sum); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}

	// Moving d2 to another job and bundle moves its counts, with no stale
	// entries left behind.
	if _, err := s.SetDesired(ctx, "d2", 0, desired(1, "fw-2"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	r2 := reported(2, 1)
	r2.Bundle.TargetPath, r2.Job.Status, r2.LastSeen = "fw-2.bin", "FAILED", seen.Add(time.Hour)
	if _, err := s.SetReported(ctx, "d2", 1, r2, store.Write{}); err != nil {
		t.Fatal(err)
	}
	sum, err = s.Summary(ctx, seen.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want = store.Summary{
		Total:     3,
		PerStatus: map[string]uint64{"QUEUED": 1, "FAILED": 1, store.StatusNone: 1},
		PerBundle: map[string]uint64{"fw-2.bin": 1, store.NoBundle: 2},
		Silent:    2,
	}
	if diff := cmp.Diff(want, sum); diff != "" {
		t.Errorf("summary after d2 moved (-want +got):\n%s", diff)
	}
	if got := list(store.Query{Status: "SUCCEEDED"}, 10); len(got) != 0 {
		t.Errorf("SUCCEEDED after d2 failed: %v", got)
	}
}
