package storetest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/store"
)

// testListManyPages lists a fleet large enough to fill every shard a
// backend may spread devices over, by every kind of query and page size:
// each listing returns every match once, in id order, whatever the page
// boundaries.
func testListManyPages(t *testing.T, s store.Devices) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 600
	var all, canary, queued []string
	for _, i := range rng.Perm(n) {
		id := fmt.Sprintf("gw-%x-%d", rng.Uint32(), i)
		d := newDevice(id)
		if i%3 == 0 {
			d.Labels["ring"] = "canary"
			canary = append(canary, id)
		}
		if _, _, err := s.CreateDevice(ctx, d); err != nil {
			t.Fatal(err)
		}
		if i%5 == 0 {
			if _, err := s.SetDesired(ctx, id, 0, desired(1, "fw-2"), store.Write{}); err != nil {
				t.Fatal(err)
			}
			queued = append(queued, id)
		}
		all = append(all, id)
	}
	for _, ids := range [][]string{all, canary, queued} {
		slices.Sort(ids)
	}
	list := func(q store.Query, limit int) []string {
		t.Helper()
		var ids []string
		after := ""
		for range n + 2 {
			page, err := s.ListDevices(ctx, store.ListOptions{After: after, Limit: limit, Query: q})
			if err != nil {
				t.Fatal(err)
			}
			if len(page) > limit {
				t.Fatalf("page of %d, limit %d", len(page), limit)
			}
			for _, d := range page {
				ids = append(ids, d.ID)
			}
			if len(page) < limit {
				return ids
			}
			after = page[len(page)-1].ID
		}
		t.Fatal("listing does not end")
		return nil
	}
	tests := []struct {
		name string
		q    store.Query
		want []string
	}{
		{"all", store.Query{}, all},
		{"label", store.Query{Labels: map[string]string{"ring": "canary"}}, canary},
		{"status", store.Query{Status: "QUEUED"}, queued},
		{"label and status", store.Query{Labels: map[string]string{"ring": "canary", "model": "gw2"}, Status: "QUEUED"},
			intersect(canary, queued)},
	}
	for _, tt := range tests {
		for _, limit := range []int{7, 100, n} {
			if diff := cmp.Diff(tt.want, list(tt.q, limit)); diff != "" {
				t.Errorf("%s, pages of %d (-want +got):\n%s", tt.name, limit, diff)
			}
		}
	}
	// A cursor that names no device starts after it all the same.
	page, err := s.ListDevices(ctx, store.ListOptions{After: all[41] + "\x00", Limit: 3})
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{page[0].ID, page[1].ID, page[2].ID}; !slices.Equal(got, all[42:45]) {
		t.Errorf("page after a cursor between ids = %v, want %v", got, all[42:45])
	}
}

func intersect(a, b []string) []string {
	var out []string
	for _, x := range a {
		if slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// testSummaryAfterManyWrites moves many devices through jobs and bundles
// at random and checks that the maintained counters agree with the
// documents.
func testSummaryAfterManyWrites(t *testing.T, s store.Devices) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 300
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("d-%03d", i)
		mustCreate(t, s, ids[i])
	}
	bundles := []string{"", "fw-1.bin", "fw-2.bin"}
	statuses := []string{"SUCCEEDED", "FAILED", "DOWNLOADING"}
	for range 4 * n {
		id := ids[rng.IntN(n)]
		cur, err := s.GetDevice(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if rng.IntN(2) == 0 {
			next := desired(cur.Desired.Version+1, "fw-2.bin")
			if _, err := s.SetDesired(ctx, id, cur.Desired.Version, next, store.Write{}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		r := reported(cur.Reported.Version+1, cur.Desired.Version)
		r.Bundle.TargetPath = bundles[rng.IntN(len(bundles))]
		r.Job.Status = statuses[rng.IntN(len(statuses))]
		r.LastSeen = at.Add(timeMinutes(rng.IntN(60)))
		if _, err := s.SetReported(ctx, id, cur.Reported.Version, r, store.Write{Event: event("job_ended", 1)}); err != nil {
			t.Fatal(err)
		}
	}
	silentBefore := at.Add(timeMinutes(30))
	want := store.Summary{Total: n, PerStatus: map[string]uint64{}, PerBundle: map[string]uint64{}}
	for _, id := range ids {
		d, err := s.GetDevice(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		want.PerStatus[d.JobStatus()]++
		want.PerBundle[d.BundleKey()]++
		if d.Reported.LastSeen.Before(silentBefore) {
			want.Silent++
		}
	}
	got, err := s.Summary(ctx, silentBefore)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("summary after %d writes (-want +got):\n%s", 4*n, diff)
	}
}
