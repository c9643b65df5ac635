package replica_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in   string
		want string // the parsed selector, written back; "" for none
		ok   bool
	}{
		{"", "", true},
		{"model=gw2", "model=gw2", true},
		{" model = gw2 , ring=canary ", "model=gw2,ring=canary", true},
		{"model=", "model=", true},
		{"model", "model", true},
		{"!model", "!model", true},
		{"model!=gw2", "model!=gw2", true},
		{"model in (gw3, gw2)", "model in (gw2,gw3)", true},
		{"model notin (gw2)", "model notin (gw2)", true},
		{"attr.hardware in (gw2,gw3),ring=canary", "attr.hardware in (gw2,gw3),ring=canary", true},
		{"=gw2", "", false},
		{"a=b=c", "", false},
		{"a=b,,c=d", "", false},
		{"model in gw2", "", false},
		{"model in (", "", false},
		{"bad key!=x", "", false},
		{"model=has space", "", false},
		{strings.Repeat("a=b,", 20) + "a=b", "", false},
		{"a=" + strings.Repeat("b", 5000), "", false},
	}
	for _, tt := range tests {
		got, err := replica.ParseSelector(tt.in)
		if tt.ok != (err == nil) {
			t.Errorf("ParseSelector(%q) error = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		var ie *replica.InvalidError
		if err != nil {
			if !errors.As(err, &ie) || ie.Field != "selector" {
				t.Errorf("ParseSelector(%q): %v is not an InvalidError of the selector", tt.in, err)
			}
			continue
		}
		var str string
		if got != nil {
			str = got.String()
		}
		if str != tt.want {
			t.Errorf("ParseSelector(%q) = %q, want %q", tt.in, str, tt.want)
		}
	}
}

func FuzzParseSelector(f *testing.F) {
	f.Add("model=gw2,ring=canary")
	f.Add("attr.hardware in (a,b),!x,y notin (z)")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := replica.ParseSelector(in)
		if err != nil || got == nil {
			return
		}
		again, err := replica.ParseSelector(got.String())
		if err != nil || again.String() != got.String() {
			t.Fatalf("ParseSelector(%q) = %q, which parses back as %v, %v", in, got.String(), again, err)
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
	sel, err := replica.ParseSelector("ring in (canary)")
	if err != nil {
		t.Fatal(err)
	}
	n, err := r.SetDesiredMatching(ctx, sel, doc("fw.bin"), "op")
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
