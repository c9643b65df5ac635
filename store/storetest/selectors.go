package storetest

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/ferryhq/ferry/store"
)

// selectorFleet creates devices with labels and attributes for the
// selector tests: their ids, labels and attributes.
func selectorFleet(t *testing.T, s store.Devices) {
	t.Helper()
	ctx := context.Background()
	fleet := []struct {
		id            string
		labels, attrs map[string]string
	}{
		{"d1", map[string]string{"ring": "canary", "site": "north"}, map[string]string{"hardware": "gw2", "os": "debian-12"}},
		{"d2", map[string]string{"ring": "canary"}, map[string]string{"hardware": "gw3", "os": "debian-12"}},
		{"d3", map[string]string{"ring": "stable", "site": "south"}, map[string]string{"hardware": "gw2"}},
		{"d4", map[string]string{"ring": "stable"}, nil},
		// A label that looks like an attribute is never selected as one.
		{"d5", map[string]string{"attr.hardware": "gw2"}, map[string]string{"hardware": "gw4"}},
	}
	for _, d := range fleet {
		if _, _, err := s.CreateDevice(ctx, store.Device{ID: d.id, Labels: d.labels, CreatedAt: at}); err != nil {
			t.Fatal(err)
		}
		if d.attrs == nil {
			continue
		}
		got, changed, err := s.SetAttributes(ctx, d.id, d.attrs)
		if err != nil || !changed {
			t.Fatalf("SetAttributes(%s) = changed %v, %v", d.id, changed, err)
		}
		if diff := cmp.Diff(d.attrs, got.Attributes); diff != "" {
			t.Fatalf("SetAttributes(%s) returned (-want +got):\n%s", d.id, diff)
		}
	}
}

func testSelectors(t *testing.T, s store.Devices) {
	ctx := context.Background()
	selectorFleet(t, s)
	// d3 moves to a job, so that status and selector combine.
	if _, err := s.SetDesired(ctx, "d3", 0, desired(1, "fw-2"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		sel    string
		status string
		want   []string
	}{
		{"ring=canary", "", []string{"d1", "d2"}},
		{"ring==canary", "", []string{"d1", "d2"}},
		{"ring!=canary", "", []string{"d3", "d4", "d5"}},
		{"ring in (canary,stable)", "", []string{"d1", "d2", "d3", "d4"}},
		{"ring notin (canary)", "", []string{"d3", "d4", "d5"}},
		{"site", "", []string{"d1", "d3"}},
		{"!site", "", []string{"d2", "d4", "d5"}},
		{"attr.hardware=gw2", "", []string{"d1", "d3"}},
		{"attr.hardware in (gw2,gw3)", "", []string{"d1", "d2", "d3"}},
		{"attr.hardware in (gw3,gw4,gw9)", "", []string{"d2", "d5"}},
		{"attr.hardware notin (gw2)", "", []string{"d2", "d4", "d5"}},
		{"!attr.hardware", "", []string{"d4"}},
		{"attr.os", "", []string{"d1", "d2"}},
		{"ring=canary,attr.hardware!=gw2", "", []string{"d2"}},
		{"ring in (canary,stable),attr.hardware=gw2,site=south", "", []string{"d3"}},
		{"attr.hardware=gw2", "QUEUED", []string{"d3"}},
		{"ring=canary", "QUEUED", nil},
		{"attr.hardware=gw9", "", nil},
		{"ring in (nothing)", "", nil},
	}
	for _, tt := range tests {
		sel, err := labels.Parse(tt.sel)
		if err != nil {
			t.Fatalf("parse %q: %v", tt.sel, err)
		}
		q := store.Query{Selector: sel, Status: tt.status}
		for _, limit := range []int{1, 2, 10} {
			if diff := cmp.Diff(tt.want, listAll(t, s, q, limit)); diff != "" {
				t.Errorf("%q status %q, pages of %d (-want +got):\n%s", tt.sel, tt.status, limit, diff)
			}
		}
	}
}

func testAttributes(t *testing.T, s store.Devices) {
	ctx := context.Background()
	selectorFleet(t, s)
	gw2 := func() []string {
		t.Helper()
		sel, _ := labels.Parse("attr.hardware=gw2")
		return listAll(t, s, store.Query{Selector: sel}, 10)
	}
	// The same attributes again change nothing.
	d, changed, err := s.SetAttributes(ctx, "d1", map[string]string{"os": "debian-12", "hardware": "gw2"})
	if err != nil || changed {
		t.Fatalf("SetAttributes with the same attributes = changed %v, %v", changed, err)
	}
	if d.ID != "d1" || d.Attributes["hardware"] != "gw2" {
		t.Errorf("SetAttributes returned %+v", d)
	}
	// A change moves the index entry, leaving no stale one behind, and
	// keeps the versioned documents.
	before, err := s.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if _, changed, err := s.SetAttributes(ctx, "d1", map[string]string{"hardware": "gw3"}); err != nil || !changed {
		t.Fatalf("SetAttributes = changed %v, %v", changed, err)
	}
	if diff := cmp.Diff([]string{"d3"}, gw2()); diff != "" {
		t.Errorf("gw2 after d1 moved (-want +got):\n%s", diff)
	}
	after, err := s.GetDevice(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"hardware": "gw3"}, after.Attributes); diff != "" {
		t.Errorf("stored attributes (-want +got):\n%s", diff)
	}
	if after.Desired.Version != before.Desired.Version || after.Reported.Version != before.Reported.Version {
		t.Errorf("SetAttributes moved the versions: %d/%d, was %d/%d", after.Desired.Version, after.Reported.Version, before.Desired.Version, before.Reported.Version)
	}
	// Versioned writes keep the attributes and their index entries.
	if _, err := s.SetDesired(ctx, "d3", 0, desired(1, "fw-2"), store.Write{}); err != nil {
		t.Fatal(err)
	}
	r := reported(1, 1)
	if got, err := s.SetReported(ctx, "d3", 0, r, store.Write{}); err != nil || got.Attributes["hardware"] != "gw2" {
		t.Fatalf("SetReported = %v attributes %v", err, got.Attributes)
	}
	if diff := cmp.Diff([]string{"d3"}, gw2()); diff != "" {
		t.Errorf("gw2 after d3 reported (-want +got):\n%s", diff)
	}
	// No attributes at all removes every entry.
	if _, changed, err := s.SetAttributes(ctx, "d3", nil); err != nil || !changed {
		t.Fatalf("SetAttributes(nil) = changed %v, %v", changed, err)
	}
	if got := gw2(); len(got) != 0 {
		t.Errorf("gw2 after d3 cleared: %v", got)
	}
	if got, err := s.GetDevice(ctx, "d3"); err != nil || len(got.Attributes) != 0 {
		t.Errorf("d3 after clearing: %v, attributes %v", err, got.Attributes)
	}
	if _, changed, err := s.SetAttributes(ctx, "d3", map[string]string{}); err != nil || changed {
		t.Errorf("SetAttributes(empty) on none = changed %v, %v", changed, err)
	}
	// CreateDevice does not write attributes.
	if d, _, err := s.CreateDevice(ctx, store.Device{ID: "d9", Attributes: map[string]string{"hardware": "gw2"}}); err != nil || len(d.Attributes) != 0 {
		t.Errorf("CreateDevice with attributes = %v, %v", d.Attributes, err)
	}
	if _, _, err := s.SetAttributes(ctx, "nope", map[string]string{"hardware": "gw2"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("SetAttributes of a missing device = %v, want ErrNotFound", err)
	}
}

// listAll pages through a query's devices and returns their ids.
func listAll(t *testing.T, s store.Devices, q store.Query, limit int) []string {
	t.Helper()
	var ids []string
	after := ""
	for range 20 {
		page, err := s.ListDevices(context.Background(), store.ListOptions{After: after, Limit: limit, Query: q})
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
