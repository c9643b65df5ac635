package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/ferryhq/ferry/store"
)

// testDesiredBatch writes many devices' desired documents in one batch
// (store.DesiredBatcher): each its own compare-and-set, event and index
// entry; a conflict or a missing device fails only that device; repeating
// the batch changes nothing.
func testDesiredBatch(t *testing.T, s store.Devices) {
	ctx := context.Background()
	if _, ok := s.(store.DesiredBatcher); !ok {
		t.Fatalf("%T does not implement store.DesiredBatcher", s)
	}
	const n = 40
	var writes []store.DesiredWrite
	for i := range n {
		id := fmt.Sprintf("dev-%02d", i)
		if _, _, err := s.CreateDevice(ctx, newDevice(id)); err != nil {
			t.Fatal(err)
		}
		ev := store.Event{Time: at, Kind: "desired_set", JobID: "job-1", DesiredVersion: 1, Status: "QUEUED", Actor: "operator:dev"}
		writes = append(writes, store.DesiredWrite{ID: id, Expect: 0, Desired: desired(1, "fw-2.bin"), Write: store.Write{Event: ev}})
	}
	// dev-07 moved on before the batch; dev-missing does not exist.
	if _, err := s.SetDesired(ctx, "dev-07", 0, desired(1, "fw-other.bin"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	writes = append(writes, store.DesiredWrite{ID: "dev-missing", Expect: 0, Desired: desired(1, "fw-2.bin")})
	for round := range 2 { // the second round repeats the batch
		res, err := store.SetDesiredBatch(ctx, s, writes)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if len(res) != len(writes) {
			t.Fatalf("round %d: %d results for %d writes", round, len(res), len(writes))
		}
		for i, r := range res {
			id := writes[i].ID
			switch id {
			case "dev-07":
				if !errors.Is(r.Err, store.ErrConflict) || r.Device.Desired.Bundle.TargetPath != "fw-other.bin" {
					t.Errorf("round %d: %s = %v (bundle %q), want ErrConflict with the stored device", round, id, r.Err, r.Device.Desired.Bundle.TargetPath)
				}
			case "dev-missing":
				if !errors.Is(r.Err, store.ErrNotFound) {
					t.Errorf("round %d: %s = %v, want ErrNotFound", round, id, r.Err)
				}
			default:
				if r.Err != nil || r.Device.ID != id || r.Device.Desired.Version != 1 || r.Device.Desired.Bundle.TargetPath != "fw-2.bin" {
					t.Errorf("round %d: %s = %+v, %v; want desired version 1 with fw-2.bin", round, id, r.Device.Desired, r.Err)
				}
			}
		}
	}
	for _, id := range []string{"dev-00", "dev-13", "dev-39"} {
		d, err := s.GetDevice(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if d.Desired.Version != 1 || d.Desired.JobID != "job-1" || !d.Desired.SetAt.Equal(at) {
			t.Errorf("%s desired = %+v", id, d.Desired)
		}
		evs, err := s.ListEvents(ctx, id, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) != 1 || evs[0].Kind != "desired_set" || evs[0].Seq != 1 {
			t.Errorf("%s events = %+v, want one desired_set", id, evs)
		}
	}
	queued, err := s.ListDevices(ctx, store.ListOptions{Limit: 100, Query: store.Query{Status: "QUEUED"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(queued) != n {
		t.Errorf("%d devices indexed QUEUED, want %d", len(queued), n)
	}
	sum, err := s.Summary(ctx, at)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Total != n || sum.PerStatus["QUEUED"] != n {
		t.Errorf("summary = %+v, want %d devices, all QUEUED", sum, n)
	}
}
