package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
)

// run runs ferryctl against f with args and returns its output.
func run(t *testing.T, f *ferrytest.Ferryd, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(append([]string{"--server", f.APIURL(), "--ca-file", f.Dev.CACert, "--token-file", f.Dev.OperatorToken}, args...))
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestDeviceCommands(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.Publish(t, "gw/fw-2.bin")
	sum, length := ferrytest.BundleSHA256, fmt.Sprint(len(ferrytest.BundleData))
	tests := []struct {
		name    string
		args    []string
		want    []string // substrings of the output
		wantErr string
	}{
		{"list", []string{"device", "list"}, []string{"DEVICE", "dev-1", "dev-3", "never"}, ""},
		{"set desired", []string{"device", "set-desired", "dev-1", "--target", "gw/fw-2.bin", "--length", length,
			"--sha256", sum, "--config", "log.level=debug"}, []string{"dev-1: desired version 1, job job-"}, ""},
		{"get", []string{"device", "get", "dev-1"}, []string{"device           dev-1", "labels           group=dev",
			"desired          v1: gw/fw-2.bin (4095 bytes, sha256 ", "desired config   log.level=debug", "set by           operator:dev-admin at ",
			"reported         v0: -", "job              job-", ": QUEUED", "last seen        never"}, ""},
		{"show", []string{"device", "show", "dev-2"}, []string{"device           dev-2", "job              -"}, ""},
		{"list wide", []string{"device", "list", "--wide"}, []string{"JOB ID", "DESIRED BUNDLE", "QUEUED  job-", "gw/fw-2.bin"}, ""},
		{"get as JSON", []string{"device", "get", "dev-1", "-o", "json"}, []string{`"targetPath": "gw/fw-2.bin"`, `"log.level": "debug"`}, ""},
		{"stale expected version", []string{"device", "set-desired", "dev-1", "--config", "a=b", "--expect-version", "0"}, nil, "aborted"},
		{"bad target", []string{"device", "set-desired", "dev-1", "--target", "/etc/x", "--length", "1", "--sha256", sum}, nil, "invalid_argument: document.bundle.target_path"},
		{"unknown device", []string{"device", "get", "nope"}, nil, "not_found"},
		{"missing argument", []string{"device", "get"}, nil, "accepts 1 arg"},
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
		// Columns are compared with their padding collapsed to one space.
		for _, w := range tt.want {
			if !strings.Contains(spaces.ReplaceAllString(out, " "), spaces.ReplaceAllString(w, " ")) {
				t.Errorf("%s: output lacks %q:\n%s", tt.name, w, out)
			}
		}
	}
}

// TestDeviceShowsClaim: a device's unsigned claim is shown apart from what
// its reports proved.
func TestDeviceShowsClaim(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.OpenDevice(t, "dev-1", &devicev1.Hello{LastAppliedDesiredVersion: 4, Reported: &devicev1.ReportedState{
		Bundle: ferrytest.Bundle("evil/never-published.bin"), Config: map[string]string{"owner": "me"}}})
	out, err := run(t, f, "device", "show", "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"reported v0: -\n", "claims evil/never-published.bin (4095 bytes, sha256 ", "(unsigned Hello ", "; last applied v4)",
		"claimed config owner=me"} {
		if !strings.Contains(spaces.ReplaceAllString(out, " "), w) {
			t.Errorf("device show lacks %q:\n%s", w, out)
		}
	}
}

// TestDeviceShowsDownload: the bytes a job downloaded, and how, as the
// device's Progress said, stay in the fleet view after its report.
func TestDeviceShowsDownload(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.Publish(t, "gw/fw-2.bin")
	d := f.OpenDevice(t, "dev-1", &devicev1.Hello{})
	if _, err := run(t, f, "device", "set-desired", "dev-1", "--bundle", "gw/fw-2.bin"); err != nil {
		t.Fatal(err)
	}
	delta := d.Recv().GetDelta()
	for _, p := range []*devicev1.Progress{
		{Step: devicev1.Step_STEP_DOWNLOADING, DownloadMethod: devicev1.DownloadMethod_DOWNLOAD_METHOD_DELTA},
		{Step: devicev1.Step_STEP_VERIFYING, DownloadMethod: devicev1.DownloadMethod_DOWNLOAD_METHOD_DELTA, BytesDownloaded: 812},
	} {
		p.JobId, p.DesiredVersion = delta.GetJobId(), delta.GetDesiredVersion()
		d.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Progress{Progress: p}})
	}
	d.SendReport(&devicev1.Report{JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: &devicev1.ReportedState{Bundle: delta.GetDesired().GetBundle()}})
	if got := d.Recv().GetAccepted(); got == nil {
		t.Fatal("the report was not accepted")
	}
	out, err := run(t, f, "device", "show", "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"job " + delta.GetJobId() + ": SUCCEEDED\n", "downloaded 812 bytes as a delta patch\n"} {
		if !strings.Contains(spaces.ReplaceAllString(out, " "), w) {
			t.Errorf("device show lacks %q:\n%s", w, out)
		}
	}
}

// spaces is a run of spaces, as tabwriter pads columns.
var spaces = regexp.MustCompile(` {2,}`)

func TestNoCredential(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	cmd := newRootCmd()
	cmd.SetArgs([]string{"--server", f.APIURL(), "--ca-file", f.Dev.CACert, "--token-file", "", "device", "list"})
	if err := cmd.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "no operator credential") {
		t.Errorf("without a credential: %v", err)
	}
	cmd = newRootCmd()
	cmd.SetArgs([]string{"--server", f.APIURL(), "--ca-file", f.Dev.CACert, "--token", "ferry_wrong", "device", "list"})
	if err := cmd.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "unauthenticated") {
		t.Errorf("with a wrong key: %v", err)
	}
}
