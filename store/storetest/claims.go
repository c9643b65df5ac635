package storetest

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/store"
)

// testClaimsAreNotIndexed: a device's claim (what its unsigned Hello said)
// is stored with the reported document exactly as written, and the bundle
// index, listings and the summary follow Reported.Bundle alone: a write
// that changes only the claim moves no index entry and no count.
func testClaimsAreNotIndexed(t *testing.T, s store.Devices) {
	ctx := context.Background()
	mustCreate(t, s, "d1") // verified fw-1.bin, claims fw-9.bin
	mustCreate(t, s, "d2") // never reported, claims fw-9.bin
	r := reported(1, 1)
	r.Signed = true
	if _, err := s.SetReported(ctx, "d1", 0, r, store.Write{}); err != nil {
		t.Fatal(err)
	}
	claim := &store.Claim{
		Bundle:      store.Bundle{TargetPath: "fw-9.bin", Length: 9, SHA256: "cd"},
		Config:      map[string]string{"mode": "claimed"},
		LastApplied: 7,
		At:          at,
	}
	withClaim := r
	withClaim.Version, withClaim.Claim = 2, claim
	got, err := s.SetReported(ctx, "d1", 1, withClaim, store.Write{Event: store.Event{Time: at, Kind: "hello_claim", Actor: "device:d1"}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(withClaim, got.Reported, equalTime); diff != "" {
		t.Errorf("SetReported with a claim returned (-want +got):\n%s", diff)
	}
	if got, err = s.GetDevice(ctx, "d1"); err != nil {
		t.Fatal(err)
	} else if diff := cmp.Diff(withClaim, got.Reported, equalTime); diff != "" {
		t.Errorf("GetDevice after a claim (-want +got):\n%s", diff)
	}
	if _, err := s.SetReported(ctx, "d2", 0, store.Reported{Version: 1, Claim: claim}, store.Write{}); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		bundle string
		want   []string
	}{
		{"fw-9.bin", nil},
		{"fw-1.bin", []string{"d1"}},
		{store.NoBundle, []string{"d2"}},
	} {
		page, err := s.ListDevices(ctx, store.ListOptions{Limit: 10, Query: store.Query{Bundle: tt.bundle}})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range page {
			ids = append(ids, d.ID)
		}
		if diff := cmp.Diff(tt.want, ids); diff != "" {
			t.Errorf("devices running %s (-want +got):\n%s", tt.bundle, diff)
		}
	}
	sum, err := s.Summary(ctx, at)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]uint64{"fw-1.bin": 1, store.NoBundle: 1}; !cmp.Equal(want, sum.PerBundle) {
		t.Errorf("devices per bundle %v, want %v: a claim is not counted", sum.PerBundle, want)
	}

	// Dropping the claim again leaves the verified state as it was.
	cleared := withClaim
	cleared.Version, cleared.Claim = 3, nil
	if got, err = s.SetReported(ctx, "d1", 2, cleared, store.Write{}); err != nil {
		t.Fatal(err)
	} else if got.Reported.Claim != nil || got.Reported.Bundle != r.Bundle || !got.Reported.Signed {
		t.Errorf("after the claim was dropped: %+v", got.Reported)
	}
}
