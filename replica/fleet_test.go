package replica_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
		ok   bool
	}{
		{"", nil, true},
		{"model=gw2", map[string]string{"model": "gw2"}, true},
		{" model = gw2 , ring=canary ", map[string]string{"model": "gw2", "ring": "canary"}, true},
		{"model=", map[string]string{"model": ""}, true},
		{"model", nil, false},
		{"=gw2", nil, false},
		{"a=b=c", nil, false},
		{"a=b,,c=d", nil, false},
		{"a=1,a=2", nil, false},
		{strings.Repeat("a=b,", 20) + "a=b", nil, false},
	}
	for _, tt := range tests {
		got, err := replica.ParseSelector(tt.in)
		if tt.ok != (err == nil) {
			t.Errorf("ParseSelector(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if diff := cmp.Diff(tt.want, got); tt.ok && diff != "" {
			t.Errorf("ParseSelector(%q) (-want +got):\n%s", tt.in, diff)
		}
		var ie *replica.InvalidError
		if err != nil && !errors.As(err, &ie) {
			t.Errorf("ParseSelector(%q): %v is not an InvalidError", tt.in, err)
		}
	}
}

func FuzzParseSelector(f *testing.F) {
	f.Add("model=gw2,ring=canary")
	f.Add("a=,b= c ")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := replica.ParseSelector(in)
		if err != nil {
			return
		}
		for k, v := range got {
			if k == "" || strings.ContainsAny(k+v, "=,") {
				t.Fatalf("ParseSelector(%q) gave term %q=%q", in, k, v)
			}
		}
	})
}

func TestSetDesiredMatching(t *testing.T) {
	ctx := context.Background()
	r := newReplica(t)
	for _, d := range []struct {
		id     string
		labels map[string]string
	}{{"a", map[string]string{"ring": "canary"}}, {"b", map[string]string{"ring": "canary"}}, {"c", map[string]string{"ring": "main"}}} {
		if _, err := r.Register(ctx, d.id, d.labels); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.SetDesiredMatching(ctx, nil, doc("fw.bin"), "op"); err == nil {
		t.Error("an empty selector was accepted")
	}
	n, err := r.SetDesiredMatching(ctx, map[string]string{"ring": "canary"}, doc("fw.bin"), "op")
	if err != nil || n != 2 {
		t.Fatalf("SetDesiredMatching = %d, %v; want 2", n, err)
	}
	var got []string
	for _, id := range []string{"a", "b", "c"} {
		d, _ := r.GetDevice(ctx, id)
		if d.Desired.Version == 1 {
			got = append(got, id)
		}
	}
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("devices updated: %v", got)
	}
	sum, err := r.Summary(ctx, time.Now())
	if err != nil || sum.PerStatus["QUEUED"] != 2 || sum.PerStatus[store.StatusNone] != 1 {
		t.Errorf("summary: %+v, %v", sum, err)
	}
}

func TestWatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r := newReplica(t)
	r.Register(ctx, "a", nil)
	r.Register(ctx, "b", nil)
	w, err := r.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, id := range []string{"a", "b", "a"} {
		if _, err := r.SetDesired(ctx, id, doc("fw.bin"), "op", nil); err != nil {
			t.Fatal(err)
		}
	}
	var seen []string
	for len(seen) < 2 {
		ids, err := w.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, ids...)
	}
	slices.Sort(seen)
	if !slices.Equal(seen, []string{"a", "b"}) {
		t.Errorf("watched %v, want each changed device once", seen)
	}
}
