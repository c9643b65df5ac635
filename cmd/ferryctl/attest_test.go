package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

func TestAttestVerify(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.Publish(t, "gw/fw-2.bin")
	ctx := context.Background()
	b := ferrytest.Bundle("gw/fw-2.bin")
	dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{})
	if _, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: b, Config: map[string]string{"log.level": "debug"}},
	})); err != nil {
		t.Fatal(err)
	}
	delta := dev.Recv().GetDelta()
	dev.SendReport(&devicev1.Report{JobId: delta.GetJobId(), DesiredVersion: 1, Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: &devicev1.ReportedState{Bundle: b, Config: map[string]string{"log.level": "debug"}}})
	if dev.Recv().GetAccepted() == nil {
		t.Fatal("report not accepted")
	}

	prefix := filepath.Join(t.TempDir(), "report")
	common := []string{"--device-ca", f.Dev.CACert, "--trust-domain", "ferry.test"}
	out, err := run(t, f, append([]string{"attest", "verify", "dev-1", delta.GetJobId(), "--save", prefix}, common...)...)
	if err != nil {
		t.Fatalf("verify from ferryd: %v\n%s", err, out)
	}
	for _, want := range []string{"verified: signed by dev-1", "SUCCEEDED", "runs gw/fw-2.bin sha256:" + b.GetSha256(), "config log.level=debug"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// The saved files verify with no server at all.
	offline := append([]string{"attest", "verify", "--envelope", prefix + ".dsse.json", "--chain", prefix + ".chain.pem"}, common...)
	if out, err := run(t, f, offline...); err != nil || !strings.Contains(out, "verified") {
		t.Errorf("offline verify: %v\n%s", err, out)
	}
	// A changed byte does not.
	raw, _ := os.ReadFile(prefix + ".dsse.json")
	os.WriteFile(prefix+".dsse.json", []byte(strings.Replace(string(raw), `"sig":"`, `"sig":"A`, 1)), 0o644)
	if _, err := run(t, f, offline...); err == nil || !strings.Contains(err.Error(), "invalid attestation") {
		t.Errorf("tampered envelope: %v", err)
	}
	// Nor against another trust domain, nor for an unknown job.
	if _, err := run(t, f, "attest", "verify", "dev-1", delta.GetJobId(), "--device-ca", f.Dev.CACert); err == nil {
		t.Error("verified against the wrong trust domain")
	}
	if _, err := run(t, f, append([]string{"attest", "verify", "dev-1", "job-none"}, common...)...); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Errorf("unknown job: %v", err)
	}

	// Without a job id: the device's latest job, once it has ended.
	if _, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "dev-3", Document: &devicev1.DesiredDocument{Bundle: b},
	})); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, device string
		want, err    string
	}{
		{"latest job", "dev-1", "job " + delta.GetJobId() + ", desired version 1: SUCCEEDED", ""},
		{"no job yet", "dev-2", "", "dev-2 has no job yet"},
		{"job not ended", "dev-3", "", "latest job job-"},
		{"unknown device", "gw-9", "", `device "gw-9" not found`},
	}
	for _, tt := range tests {
		out, err := run(t, f, append([]string{"attest", "verify", tt.device}, common...)...)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%s: %v, want an error with %q", tt.name, err, tt.err)
		case tt.err == "" && (err != nil || !strings.Contains(out, tt.want)):
			t.Errorf("%s: %v, want output with %q:\n%s", tt.name, err, tt.want, out)
		}
	}
}
