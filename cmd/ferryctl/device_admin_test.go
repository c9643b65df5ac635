package main

import (
	"strings"
	"testing"

	"github.com/ferryhq/ferry/internal/ferrytest"
)

func TestDeviceAdminCommands(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	tests := []struct {
		name    string
		args    []string
		want    []string
		wantErr string
	}{
		{"add", []string{"device", "add", "gw-1", "--label", "model=gw2"}, []string{"gw-1 added", "ferry_enroll_"}, ""},
		{"add as JSON", []string{"device", "add", "gw-1", "-o", "json"}, []string{`"enrollmentToken": "ferry_enroll_`}, ""},
		{"add with re-enrolment", []string{"device", "add", "gw-1", "--reenroll"}, []string{"gw-1 added", "ferry_enroll_"}, ""},
		{"bad label", []string{"device", "add", "gw-2", "--label", "model"}, nil, "want key=value"},
		{"bad id", []string{"device", "add", "a b"}, nil, "invalid_argument"},
		{"revoke", []string{"device", "revoke", "gw-1", "--reason", "stolen"}, []string{"gw-1 revoked"}, ""},
		{"add a revoked device", []string{"device", "add", "gw-1"}, nil, "permission_denied"},
		{"revoke unknown", []string{"device", "revoke", "nope"}, nil, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := run(t, f, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
