package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

// agentArgs are the flags that point ferry-agent at f, with the trusted
// root in root.
func agentArgs(f *ferrytest.Ferryd, root string) []string {
	return []string{"--device-addr", f.DeviceAddr(), "--api-url", f.APIURL(), "--ca-file", f.Dev.CACert,
		"--server-name", "localhost", "--tuf-root", root}
}

// copyFile copies src to a new file in dir and returns its path.
func copyFile(t *testing.T, src, dir string) string {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(src))
	if err := os.WriteFile(dst, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestRunWithExistingCertificate: a development device runs the agent with
// its certificate and key from ferryd's development PKI (no enrollment),
// installs its desired bundle from the TUF repository, and its job
// succeeds with a signed report.
func TestRunWithExistingCertificate(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	const path = "gateway/2.0.0/fw.bin"
	f.Publish(t, path)
	dir := t.TempDir()
	root := filepath.Join(dir, "root.json")
	if err := os.WriteFile(root, f.TrustedRoot(t), 0o644); err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := f.Dev.DeviceCert("dev-1")
	cert, key := copyFile(t, certPath, dir), copyFile(t, keyPath, dir)

	ctx := t.Context()
	fleet := f.Fleet(t)
	set, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: ferrytest.Bundle(path)},
	}))
	if err != nil {
		t.Fatal(err)
	}
	job := set.Msg.GetDevice().GetDesired().GetJobId()

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	cmd := newRootCmd()
	hook := filepath.Join(dir, "inventory")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\necho board_rev=C\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd.SetArgs(append([]string{"run", "--cert", cert, "--key", key, "--state-dir", filepath.Join(dir, "state"),
		"--ab-dir", filepath.Join(dir, "slots"), "--hardware", "gw-a", "--inventory-hook", hook}, agentArgs(f, root)...))
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(runCtx) }()

	var d *fleetv1.Device
	for deadline := time.Now().Add(time.Minute); ; {
		resp, err := fleet.GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
		if err != nil {
			t.Fatal(err)
		}
		d = resp.Msg.GetDevice()
		if s := d.GetJob().GetStatus(); s != devicev1.JobStatus_JOB_STATUS_QUEUED && s != devicev1.JobStatus_JOB_STATUS_IN_PROGRESS {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("ferry-agent run ended before the job did: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("job still %v after a minute", d.GetJob().GetStatus())
		}
	}
	stop()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("ferry-agent run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("ferry-agent run did not stop")
	}
	if d.GetJob().GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED || d.GetJob().GetId() != job ||
		d.GetReported().GetState().GetBundle().GetTargetPath() != path {
		t.Fatalf("job %v, device runs %q; want job %s SUCCEEDED running %s", d.GetJob(), d.GetReported().GetState().GetBundle().GetTargetPath(), job, path)
	}
	if a := d.GetAttributes(); a["hardware"] != "gw-a" || a["board_rev"] != "C" || a["storage_free_bytes"] == "" || a["agent_version"] == "" {
		t.Errorf("attributes %v, want hardware gw-a, the hook's board_rev=C, storage_free_bytes and agent_version", a)
	}
	if _, err := fleet.GetAttestation(ctx, connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: "dev-1", JobId: job})); err != nil {
		t.Errorf("no signed report for job %s: %v", job, err)
	}
	ab := &agent.AB{Dir: filepath.Join(dir, "slots")}
	slot, err := ab.Confirmed()
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := os.ReadFile(filepath.Join(dir, "slots", slot, "bundle")); err != nil || !bytes.Equal(raw, ferrytest.BundleData) {
		t.Errorf("confirmed slot %s holds %d bytes (%v), want the published bundle", slot, len(raw), err)
	}
}

// TestRunRefusals: ferry-agent run without what it needs says what to give.
func TestRunRefusals(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.Publish(t, "gateway/1.0.0/fw.bin")
	dir := t.TempDir()
	root := filepath.Join(dir, "root.json")
	if err := os.WriteFile(root, f.TrustedRoot(t), 0o644); err != nil {
		t.Fatal(err)
	}
	cert, key := f.Dev.DeviceCert("dev-1")
	tests := []struct {
		name    string
		args    []string
		want    string
		notWant string
	}{
		{"cert without key", []string{"--cert", cert, "--ab-dir", dir}, "give both --cert and --key", ""},
		{"cert and token", []string{"--cert", cert, "--key", key, "--enrollment-token", "ferry_enroll_x", "--ab-dir", dir},
			"leave out --enrollment-token", ""},
		{"key of another device", []string{"--cert", cert, "--key", filepath.Join(f.Dev.DevicesDir, "dev-2.key"), "--ab-dir", dir},
			"from --cert", ""},
		{"no installer", []string{"--cert", cert, "--key", key}, "give --installer", ""},
		{"unknown installer", []string{"--cert", cert, "--key", key, "--installer", "mender"}, `--installer "mender": want exec, ab, rauc or swupdate`, ""},
		{"exec without hook", []string{"--cert", cert, "--key", key, "--installer", "exec"}, "--installer exec needs --install-hook", ""},
		{"swupdate selection without slot variable", []string{"--cert", cert, "--key", key, "--installer", "swupdate", "--swupdate-select", "A=stable,copy2"},
			"needs --swupdate-slot-var", ""},
		{"swupdate selection not SLOT=SELECTION", []string{"--cert", cert, "--key", key, "--installer", "swupdate", "--swupdate-select", "stable"},
			`"stable" is not SLOT=SELECTION`, ""},
		{"nothing to enroll with", []string{"--ab-dir", dir}, "enroll with --enrollment-token", ""},
		{"refused token", []string{"--enrollment-token", "ferry_enroll_notvalid", "--ab-dir", dir},
			"the enrollment token was refused", "enroll: enroll:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := newRootCmd()
			cmd.SetArgs(append(append([]string{"run", "--state-dir", t.TempDir()}, tt.args...), agentArgs(f, root)...))
			err := cmd.ExecuteContext(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one with %q", err, tt.want)
			}
			if tt.notWant != "" && strings.Contains(err.Error(), tt.notWant) {
				t.Errorf("error %v has %q", err, tt.notWant)
			}
		})
	}
}
