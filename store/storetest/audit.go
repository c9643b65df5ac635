package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/store"
)

// RunAudit runs the conformance suite of store.Audit against the stores
// newStore returns (fresh and empty for each subtest; newStore arranges
// their closing).
func RunAudit(t *testing.T, newStore func(t *testing.T) store.Audit) {
	tests := []struct {
		name string
		run  func(t *testing.T, s store.Audit)
	}{
		{"AppendChains", testAuditAppendChains},
		{"ConcurrentAppendsDoNotFork", testAuditConcurrent},
		{"ListFiltersAndPages", testAuditList},
		{"Span", testAuditSpan},
		{"Prune", testAuditPrune},
		{"SparseMatchesAcrossBatches", testAuditSparse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, newStore(t)) })
	}
}

func auditEntry(actor, action string, t time.Time) store.AuditEntry {
	return store.AuditEntry{Time: t, Actor: actor, Role: "admin", Action: action, Resource: "gw-1",
		Args: []byte(`{"device_id":"gw-1"}`), Peer: "127.0.0.1:5000", Result: "ok"}
}

// checkChain fails unless es is a well-linked run of one chain after anchor.
func checkChain(t *testing.T, anchor store.AuditEntry, es []store.AuditEntry) {
	t.Helper()
	prev := anchor
	for _, e := range es {
		if e.Seq != prev.Seq+1 || e.Prev != prev.Hash || e.Hash != store.AuditHash(e) {
			t.Fatalf("entry %d of chain %d does not follow %d (prev %q, want %q; hash ok %v)",
				e.Seq, e.Chain, prev.Seq, e.Prev, prev.Hash, e.Hash == store.AuditHash(e))
		}
		prev = e
	}
}

func testAuditAppendChains(t *testing.T, s store.Audit) {
	ctx := context.Background()
	var got []store.AuditEntry
	for i := range 5 {
		e, err := s.AppendAudit(ctx, auditEntry("operator:alice", "/x/AddDevice", at.Add(time.Duration(i)*time.Second)))
		if err != nil {
			t.Fatal(err)
		}
		if e.Chain != store.AuditChain("operator:alice") {
			t.Fatalf("entry on chain %d, want the actor's %d", e.Chain, store.AuditChain("operator:alice"))
		}
		got = append(got, e)
	}
	checkChain(t, store.AuditEntry{}, got)
	anchor, span, err := s.AuditSpan(ctx, got[0].Chain, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if anchor.Seq != 0 || len(span) != 5 {
		t.Fatalf("span: anchor %d, %d entries; want 0, 5", anchor.Seq, len(span))
	}
	checkChain(t, anchor, span)
	if !span[0].Time.Equal(at) || string(span[0].Args) != `{"device_id":"gw-1"}` {
		t.Fatalf("stored entry changed: %+v", span[0])
	}
}

func testAuditConcurrent(t *testing.T, s store.Audit) {
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 40 {
		wg.Go(func() {
			_, err := s.AppendAudit(ctx, auditEntry("device:gw-7", "/x/Renew", at.Add(time.Duration(i)*time.Millisecond)))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	anchor, span, err := s.AuditSpan(ctx, store.AuditChain("device:gw-7"), time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(span) != 40 {
		t.Fatalf("%d entries, want 40", len(span))
	}
	checkChain(t, anchor, span)
}

func testAuditList(t *testing.T, s store.Audit) {
	ctx := context.Background()
	actors := []string{"operator:alice", "operator:bob", "device:gw-1", "device:gw-2"}
	for i := range 20 {
		e := auditEntry(actors[i%4], fmt.Sprintf("/x/Action%d", i%2), at.Add(time.Duration(i)*time.Minute))
		if i%5 == 0 {
			e.Result = "permission_denied"
		}
		if _, err := s.AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		q    store.AuditQuery
		want int
	}{
		{"all", store.AuditQuery{}, 20},
		{"actor", store.AuditQuery{Actor: "operator:bob"}, 5},
		{"action suffix", store.AuditQuery{Action: "Action1"}, 10},
		{"result", store.AuditQuery{Result: "permission_denied"}, 4},
		{"resource", store.AuditQuery{Resource: "gw-9"}, 0},
		{"time range", store.AuditQuery{Since: at.Add(5 * time.Minute), Until: at.Add(10 * time.Minute)}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var all []store.AuditEntry
			token := ""
			for pages := 0; ; pages++ {
				page, err := s.ListAudit(ctx, tt.q, token, 3)
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, page.Entries...)
				if page.Next == "" {
					break
				}
				if pages > 20 {
					t.Fatal("paging does not end")
				}
				token = page.Next
			}
			if len(all) != tt.want {
				t.Fatalf("%d entries, want %d", len(all), tt.want)
			}
			for i := 1; i < len(all); i++ {
				if all[i].Time.After(all[i-1].Time) {
					t.Fatalf("entry %d is newer than entry %d: not newest first", i, i-1)
				}
			}
			for _, e := range all {
				if !tt.q.Match(e) {
					t.Fatalf("entry %+v does not match %+v", e, tt.q)
				}
			}
		})
	}
	if _, err := s.ListAudit(ctx, store.AuditQuery{}, "garbage", 3); !errors.Is(err, store.ErrBadPageToken) {
		t.Fatalf("bad page token: %v, want ErrBadPageToken", err)
	}
	if _, err := s.ListAudit(ctx, store.AuditQuery{}, "", 0); err == nil {
		t.Fatal("page size 0 accepted")
	}
}

func testAuditSpan(t *testing.T, s store.Audit) {
	ctx := context.Background()
	for i := range 10 {
		if _, err := s.AppendAudit(ctx, auditEntry("operator:carol", "/x/A", at.Add(time.Duration(i)*time.Hour))); err != nil {
			t.Fatal(err)
		}
	}
	c := store.AuditChain("operator:carol")
	anchor, span, err := s.AuditSpan(ctx, c, at.Add(3*time.Hour), at.Add(6*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if anchor.Seq != 3 || len(span) != 3 || span[0].Seq != 4 {
		t.Fatalf("span [3h,6h): anchor %d, %d entries; want anchor 3 and entries 4..6", anchor.Seq, len(span))
	}
	checkChain(t, anchor, span)
	if _, _, err := s.AuditSpan(ctx, store.AuditChains, time.Time{}, time.Time{}); err == nil {
		t.Fatal("a chain out of range was accepted")
	}
}

func testAuditPrune(t *testing.T, s store.Audit) {
	ctx := context.Background()
	for i := range 6 {
		if _, err := s.AppendAudit(ctx, auditEntry("operator:dave", "/x/A", at.Add(time.Duration(i)*time.Hour))); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PruneAudit(ctx, at.Add(4*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Fatalf("pruned %d, want 4", n)
	}
	c := store.AuditChain("operator:dave")
	_, span, err := s.AuditSpan(ctx, c, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(span) != 2 || span[0].Seq != 5 {
		t.Fatalf("after prune: %d entries from %d, want 2 from 5", len(span), span[0].Seq)
	}
	// The head stays even when it is old, and the chain goes on from it.
	if _, err := s.PruneAudit(ctx, at.Add(100*time.Hour)); err != nil {
		t.Fatal(err)
	}
	e, err := s.AppendAudit(ctx, auditEntry("operator:dave", "/x/A", at.Add(200*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if e.Seq != 7 || e.Prev != span[1].Hash {
		t.Fatalf("after pruning all but the head, next entry is %d with prev %q; want 7 after %q", e.Seq, e.Prev, span[1].Hash)
	}
}

// testAuditSparse lists entries that match rarely, so a backend that scans
// in batches must go on past batches without a match.
func testAuditSparse(t *testing.T, s store.Audit) {
	ctx := context.Background()
	want := 0
	for i := range 250 {
		e := auditEntry("operator:erin", "/x/A", at.Add(time.Duration(i)*time.Second))
		if i%110 == 5 {
			e.Resource = "gw-rare"
			want++
		}
		if _, err := s.AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	got, token := 0, ""
	for range want + 2 {
		page, err := s.ListAudit(ctx, store.AuditQuery{Resource: "gw-rare"}, token, 1)
		if err != nil {
			t.Fatal(err)
		}
		got += len(page.Entries)
		if token = page.Next; token == "" {
			break
		}
	}
	if got != want || token != "" {
		t.Fatalf("paged %d rare entries (next %q), want %d", got, token, want)
	}
}
