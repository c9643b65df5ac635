package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/internal/ferrytest"
)

func TestFleetCommands(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Redis, nil)
	f.Publish(t, "gw/fw-2.bin")
	b := ferrytest.Bundle("gw/fw-2.bin")
	if _, err := run(t, f, "device", "set-desired", "dev-2", "--target", b.GetTargetPath(), "--length", fmt.Sprint(b.GetLength()), "--sha256", b.GetSha256()); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		want    []string
		notWant []string
		wantErr string
	}{
		{"summary", []string{"fleet", "summary"}, []string{"devices", "3", "silent for 1h0m0s", "(none)", "QUEUED", "NONE"}, nil, ""},
		{"summary as JSON", []string{"fleet", "summary", "-o", "json"}, []string{`"totalDevices": "3"`, `"QUEUED": "1"`}, nil, ""},
		{"list queued", []string{"device", "list", "--status", "queued"}, []string{"dev-2"}, []string{"dev-1", "dev-3"}, ""},
		{"list by label", []string{"device", "list", "-l", "group=dev"}, []string{"dev-1", "dev-2", "dev-3"}, nil, ""},
		{"list by bundle", []string{"device", "list", "--bundle", "(none)", "--status", "QUEUED"}, []string{"dev-2"}, []string{"dev-1", "dev-3"}, ""},
		{"list silent", []string{"device", "list", "--silent-for", "1m"}, []string{"dev-1", "dev-2", "dev-3"}, nil, ""},
		{"bad status", []string{"device", "list", "--status", "DONE"}, nil, nil, "--status"},
		{"bad label", []string{"device", "list", "-l", "group in ("}, nil, nil, "invalid_argument"},
		{"events", []string{"device", "events", "dev-2"}, []string{"desired_set", "v1", "QUEUED", "gw/fw-2.bin", "operator:dev-admin"}, nil, ""},
		{"events of nobody", []string{"device", "events", "nope"}, nil, nil, "not_found"},
		{"set by selector", []string{"device", "set-desired", "--selector", "group=dev", "--config", "a=b"}, []string{"3 devices matching group=dev"}, nil, ""},
		{"selector and device", []string{"device", "set-desired", "dev-1", "--selector", "group=dev", "--config", "a=b"}, nil, nil, "unknown command"},
		{"empty selector match", []string{"device", "set-desired", "--selector", "group=none", "--config", "a=b"}, []string{"0 devices"}, nil, ""},
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
		for _, w := range tt.notWant {
			if strings.Contains(out, w) {
				t.Errorf("%s: output has %q:\n%s", tt.name, w, out)
			}
		}
	}
}

// TestDeviceListSelector: device list takes set-based selectors with
// --selector (-l), and still the older --label.
func TestDeviceListSelector(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		f.OpenDevice(t, id, nil).Close()
	}
	if _, err := run(t, f, "device", "add", "lab-1", "--label", "group=lab"); err != nil {
		t.Fatal(err)
	}
	devs := []string{"dev-1", "dev-2", "dev-3"}
	for _, tt := range []struct {
		name    string
		args    []string
		want    []string
		notWant []string
		wantErr string
	}{
		{"in", []string{"--selector", "group in (dev,lab)"}, append([]string{"lab-1"}, devs...), nil, ""},
		{"notin", []string{"--selector", "group notin (dev)"}, []string{"lab-1"}, devs, ""},
		{"absent key", []string{"-l", "!group"}, nil, append([]string{"lab-1"}, devs...), ""},
		{"not equal", []string{"-l", "group!=lab"}, devs, []string{"lab-1"}, ""},
		{"the older --label", []string{"--label", "group=lab"}, []string{"lab-1"}, devs, ""},
		{"bad selector", []string{"--selector", "group in (dev"}, nil, nil, "invalid_argument"},
	} {
		out, err := run(t, f, append([]string{"device", "list"}, tt.args...)...)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error %v, want %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %s:\n%s", tt.name, w, out)
			}
		}
		for _, w := range tt.notWant {
			if strings.Contains(out, w) {
				t.Errorf("%s: output has %s:\n%s", tt.name, w, out)
			}
		}
	}
}
