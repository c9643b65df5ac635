package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/internal/ferrytest"
)

// TestTokenKeyCommands lists and rotates the download token keys of a real
// ferryd.
func TestTokenKeyCommands(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	keys := func() (current string, previous int) {
		t.Helper()
		out, err := run(t, f, "token", "keys", "-o", "json")
		if err != nil {
			t.Fatalf("token keys: %v\n%s", err, out)
		}
		var got struct {
			Current  struct{ ID string }
			Previous []struct{ ID, RetireTime string }
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("token keys -o json: %v\n%s", err, out)
		}
		return got.Current.ID, len(got.Previous)
	}
	first, n := keys()
	if first == "" || n != 0 {
		t.Fatalf("first keyset: current %q, %d previous", first, n)
	}
	out, err := run(t, f, "token", "keys")
	if err != nil || !strings.Contains(out, first) || !strings.Contains(out, "current") || !strings.Contains(out, "KEY") {
		t.Fatalf("token keys: %v\n%s", err, out)
	}

	tests := []struct {
		name    string
		args    []string
		want    []string
		wantErr string
	}{
		{"rotate with the server's grace", []string{"token", "rotate-key"}, []string{"download token key rotated", "previous", first, "(in 10m"}, ""},
		{"rotate, old key retired at once", []string{"token", "rotate-key", "--grace", "0"}, []string{"download token key rotated", "(retired)"}, ""},
		{"negative grace", []string{"token", "rotate-key", "--grace", "-1s"}, nil, "want 0 or more"},
		{"grace too long", []string{"token", "rotate-key", "--grace", "2000h"}, nil, "invalid_argument"},
		{"extra argument", []string{"token", "rotate-key", "now"}, nil, "unknown command"},
	}
	for _, tt := range tests {
		out, err := run(t, f, tt.args...)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error %v, want %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v\n%s", tt.name, err, out)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", tt.name, w, out)
			}
		}
	}
	if cur, n := keys(); cur == first || n != 2 {
		t.Errorf("after two rotations: current %q (first %q), %d previous; want a new key and 2 previous", cur, first, n)
	}
}
