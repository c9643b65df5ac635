package main

import (
	"strings"
	"testing"

	"github.com/ferryhq/ferry/internal/ferrytest"
)

// TestRequireConsent gives desired states and rollouts a consent policy
// with ferryctl against a real ferryd, shows it, and refuses bad flags
// before any call.
func TestRequireConsent(t *testing.T) {
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"unknown step", []string{"device", "set-desired", "dev-1", "--config", "a=b", "--require-consent=later"}, `--require-consent: "later" is not install or reboot`},
		{"deferral alone", []string{"device", "set-desired", "dev-1", "--config", "a=b", "--consent-max-deferral", "1h"}, "--consent-max-deferral needs --require-consent"},
		{"negative deferral", []string{"rollout", "create", "--bundle", "b", "--group", "dev", "--require-consent", "--consent-max-deferral", "-1h"}, "must not be negative"},
	} {
		// An unreachable server: an error from a call would say so.
		out, err := runLocal(t, append([]string{"--server", "https://127.0.0.1:1", "--token", "x"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: error %v, want %q\n%s", tt.name, err, tt.wantErr, out)
		}
	}

	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.Publish(t, "gw/fw-2.bin")
	steps := []cmdStep{
		{"set desired", []string{"device", "set-desired", "dev-1", "--bundle", "gw/fw-2.bin", "--require-consent"}, []string{"dev-1: desired version 1"}, "", nil},
		{"show", []string{"device", "show", "dev-1"}, []string{" asked before install and reboot\n"}, "", nil},
		{"rollout", []string{"rollout", "create", "--bundle", "gw/fw-2.bin", "--group", "dev", "--require-consent=reboot", "--consent-max-deferral", "72h"},
			[]string{" asked before reboot, deferred at most 72h0m0s\n"}, "", nil},
		{"too long", []string{"device", "set-desired", "dev-2", "--config", "a=b", "--require-consent=install", "--consent-max-deferral", "2400h"},
			nil, "invalid_argument: document.consent.max_deferral: must be between 0 and 2160h0m0s", nil},
		{"rollout too long", []string{"rollout", "create", "--bundle", "gw/fw-2.bin", "--group", "dev", "--require-consent", "--consent-max-deferral", "2400h"},
			nil, "invalid_argument: consent.max_deferral", nil},
	}
	runSteps(t, f, steps)
}
