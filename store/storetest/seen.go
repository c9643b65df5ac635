package storetest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/store"
)

// testMarkSeen: marked last-seen times go with the reported LastSeen (the
// latest wins) in reads, listings, SeenBefore queries and the summary's
// silent count, without a new version or event. Times are whole
// milliseconds: a backend may keep no finer.
func testMarkSeen(t *testing.T, s store.Devices) {
	ctx := context.Background()
	base := testclock.Start().Truncate(time.Second)
	sec := func(n int) time.Time { return base.Add(time.Duration(n) * time.Second) }
	for _, id := range []string{"d1", "d2", "d3"} {
		mustCreate(t, s, id)
	}
	r := reported(1, 0)
	r.LastSeen = sec(0)
	if _, err := s.SetReported(ctx, "d1", 0, r, store.Write{Event: event("hello", 0)}); err != nil {
		t.Fatal(err)
	}
	before, err := s.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	lastSeen := func(id string) time.Time {
		t.Helper()
		d, err := s.GetDevice(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return d.Reported.LastSeen
	}
	mark := func(seen ...store.Seen) {
		t.Helper()
		if err := s.MarkSeen(ctx, seen); err != nil {
			t.Fatalf("MarkSeen(%v): %v", seen, err)
		}
	}
	mark(store.Seen{ID: "d1", At: sec(10)}, store.Seen{ID: "d2", At: sec(30)}, store.Seen{ID: "d2", At: sec(25)},
		store.Seen{ID: "ghost", At: sec(5)})
	mark() // an empty batch is fine
	steps := []struct {
		name string
		seen []store.Seen
		want map[string]time.Time
	}{
		{"later times win, also within a batch", nil, map[string]time.Time{"d1": sec(10), "d2": sec(30), "d3": {}}},
		{"earlier times are ignored", []store.Seen{{ID: "d1", At: sec(5)}, {ID: "d2", At: sec(29)}},
			map[string]time.Time{"d1": sec(10), "d2": sec(30), "d3": {}}},
		{"a later time moves it again", []store.Seen{{ID: "d1", At: sec(12)}}, map[string]time.Time{"d1": sec(12), "d2": sec(30), "d3": {}}},
	}
	for _, st := range steps {
		mark(st.seen...)
		for id, want := range st.want {
			if got := lastSeen(id); !got.Equal(want) {
				t.Errorf("%s: %s last seen %v, want %v", st.name, id, got, want)
			}
		}
	}
	if _, err := s.GetDevice(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("MarkSeen of an unknown id created it: %v", err)
	}
	// Nothing else of the device moved.
	after, err := s.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	after.Reported.LastSeen = before.Reported.LastSeen
	if diff := cmp.Diff(before, after, equalTime); diff != "" {
		t.Errorf("MarkSeen changed more than the last-seen time (-before +after):\n%s", diff)
	}
	if evs, err := s.ListEvents(ctx, "d1", 0, 10); err != nil || len(evs) != 1 {
		t.Errorf("events after MarkSeen: %v, %v; want the one event written", evs, err)
	}

	listed := func(q store.Query) []string {
		t.Helper()
		devs, err := s.ListDevices(ctx, store.ListOptions{Limit: 10, Query: q})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range devs {
			ids = append(ids, d.ID)
			if want := lastSeen(d.ID); !d.Reported.LastSeen.Equal(want) {
				t.Errorf("listed %s last seen %v, GetDevice says %v", d.ID, d.Reported.LastSeen, want)
			}
		}
		return ids
	}
	silent := func(before time.Time) uint64 {
		t.Helper()
		sum, err := s.Summary(ctx, before)
		if err != nil {
			t.Fatal(err)
		}
		return sum.Silent
	}
	checkQueries := func(step string, seenBefore map[int][]string) {
		t.Helper()
		for n, want := range seenBefore {
			if got := listed(store.Query{SeenBefore: sec(n)}); !slices.Equal(got, want) {
				t.Errorf("%s: seen before +%ds: %v, want %v", step, n, got, want)
			}
			if got := silent(sec(n)); got != uint64(len(want)) {
				t.Errorf("%s: silent before +%ds: %d, want %d", step, n, got, len(want))
			}
		}
	}
	checkQueries("marked", map[int][]string{5: {"d3"}, 12: {"d3"}, 13: {"d1", "d3"}, 31: {"d1", "d2", "d3"}})
	listed(store.Query{Status: "SUCCEEDED"}) // an index walk gives the marked time too

	// A document write with an older LastSeen keeps the mark; a newer one
	// wins over it.
	r.Version, r.LastSeen = 2, sec(1)
	if _, err := s.SetReported(ctx, "d1", 1, r, store.Write{}); err != nil {
		t.Fatal(err)
	}
	if got := lastSeen("d1"); !got.Equal(sec(12)) {
		t.Errorf("after a write with an older LastSeen: %v, want the mark %v", got, sec(12))
	}
	checkQueries("older write", map[int][]string{5: {"d3"}, 13: {"d1", "d3"}})
	r.Version, r.LastSeen = 3, sec(40)
	if _, err := s.SetReported(ctx, "d1", 2, r, store.Write{}); err != nil {
		t.Fatal(err)
	}
	if got := lastSeen("d1"); !got.Equal(sec(40)) {
		t.Errorf("after a write with a newer LastSeen: %v, want %v", got, sec(40))
	}
	checkQueries("newer write", map[int][]string{31: {"d2", "d3"}, 41: {"d1", "d2", "d3"}})
	mark(store.Seen{ID: "d1", At: sec(35)}) // older than the document's
	if got := lastSeen("d1"); !got.Equal(sec(40)) {
		t.Errorf("a mark older than the document's LastSeen: %v, want %v", got, sec(40))
	}
	checkQueries("older mark", map[int][]string{31: {"d2", "d3"}, 41: {"d1", "d2", "d3"}})
}
