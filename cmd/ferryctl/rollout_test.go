package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"

	"github.com/ferryhq/ferry/internal/ferrytest"
)

func TestParseWaves(t *testing.T) {
	count := func(n uint64) *fleetv1.Wave { return &fleetv1.Wave{Size: &fleetv1.Wave_Count{Count: n}} }
	pct := func(p float64) *fleetv1.Wave { return &fleetv1.Wave{Size: &fleetv1.Wave_Percent{Percent: p}} }
	tests := []struct {
		in      string
		want    []*fleetv1.Wave
		wantErr string
	}{
		{"5,25%,100%", []*fleetv1.Wave{count(5), pct(25), pct(100)}, ""},
		{"1", []*fleetv1.Wave{count(1)}, ""},
		{" 0.5% , 10 ", []*fleetv1.Wave{pct(0.5), count(10)}, ""},
		{"100%", []*fleetv1.Wave{pct(100)}, ""},
		{"120%", nil, `"120%": want a percent above 0 and at most 100`},
		{"0%", nil, "want a percent above 0"},
		{"-5%", nil, "want a percent above 0"},
		{"0", nil, "want a number of devices"},
		{"-1", nil, "want a number of devices"},
		{"2.5", nil, "want a number of devices"},
		{"5,,10", nil, `"": want a number of devices`},
		{"x%", nil, "want a percent"},
	}
	for _, tt := range tests {
		got, err := parseWaves(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		if !protoSliceEqual(got, tt.want) {
			t.Errorf("%q: %v, want %v", tt.in, got, tt.want)
		}
	}
}

func protoSliceEqual[M proto.Message](a, b []M) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func TestParseAbortRule(t *testing.T) {
	rule := func(s devicev1.JobStatus, p float64, n uint64) *fleetv1.AbortRule {
		return &fleetv1.AbortRule{Status: s, Percent: p, MinExecutions: n}
	}
	tests := []struct {
		in      string
		want    *fleetv1.AbortRule
		wantErr string
	}{
		{"failed:10%:20", rule(devicev1.JobStatus_JOB_STATUS_FAILED, 10, 20), ""},
		{"timed_out:20%", rule(devicev1.JobStatus_JOB_STATUS_TIMED_OUT, 20, 1), ""},
		{"TIMED-OUT:20", rule(devicev1.JobStatus_JOB_STATUS_TIMED_OUT, 20, 1), ""},
		{"Rejected:0.5%:3", rule(devicev1.JobStatus_JOB_STATUS_REJECTED, 0.5, 3), ""},
		{"JOB_STATUS_ROLLED_BACK:100%", rule(devicev1.JobStatus_JOB_STATUS_ROLLED_BACK, 100, 1), ""},
		{"bogus", nil, "want STATUS:PERCENT[:MIN]"},
		{"bogus:10%", nil, `status "bogus": want one of failed, rejected, timed_out, rolled_back`},
		{"succeeded:10%", nil, "want one of failed"},
		{"failed:0%", nil, "want above 0 and at most 100"},
		{"failed:101%", nil, "want above 0 and at most 100"},
		{"failed:ten", nil, `percent "ten"`},
		{"failed:10%:0", nil, "at least 1"},
		{"failed:10%:x", nil, `MIN "x"`},
		{"failed:10%:2:3", nil, "want STATUS:PERCENT[:MIN]"},
	}
	for _, tt := range tests {
		got, err := parseAbortRule(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !proto.Equal(got, tt.want) {
			t.Errorf("%q: %v %v, want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseStartAt(t *testing.T) {
	now := time.Date(2026, 11, 22, 21, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr string
	}{
		{"+2h", now.Add(2 * time.Hour), ""},
		{"+90m", now.Add(90 * time.Minute), ""},
		{"2026-11-23T02:00:00+01:00", time.Date(2026, 11, 23, 1, 0, 0, 0, time.UTC), ""},
		{"2026-11-23T02:00:00Z", time.Date(2026, 11, 23, 2, 0, 0, 0, time.UTC), ""},
		{"+0s", time.Time{}, "want a positive duration"},
		{"+-1h", time.Time{}, "want a positive duration"},
		{"+soon", time.Time{}, "want a positive duration"},
		{"2h", time.Time{}, "want an RFC 3339 time"},
		{"2026-11-23 02:00", time.Time{}, "want an RFC 3339 time"},
		{"2026-11-22T20:00:00Z", time.Time{}, "is in the past"},
	}
	for _, tt := range tests {
		got, err := parseStartAt(tt.in, now)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("%q: %v %v, want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseWindow(t *testing.T) {
	win := func(start string, d time.Duration, days []string, tz string) *fleetv1.MaintenanceWindow {
		return &fleetv1.MaintenanceWindow{Start: start, Duration: durationpb.New(d), Days: days, TimeZone: tz}
	}
	tests := []struct {
		name    string
		window  string
		days    []string
		tz      string
		want    *fleetv1.MaintenanceWindow
		wantErr string
	}{
		{"every day, UTC", "02:00/4h", nil, "", win("02:00", 4*time.Hour, nil, ""), ""},
		{"one-digit hour", "2:30/90m", nil, "", win("02:30", 90*time.Minute, nil, ""), ""},
		{"days and zone", "23:00/6h", []string{"mon", "Tue"}, "Europe/Berlin", win("23:00", 6*time.Hour, []string{"mon", "tue"}, "Europe/Berlin"), ""},
		{"full day names", "00:00/24h", []string{"saturday", "Sunday"}, "", win("00:00", 24*time.Hour, []string{"sat", "sun"}, ""), ""},
		{"range", "01:00/1h", []string{"mon-fri"}, "", win("01:00", time.Hour, []string{"mon", "tue", "wed", "thu", "fri"}, ""), ""},
		{"range across the week end", "01:00/1h", []string{"fri-mon", "sat"}, "", win("01:00", time.Hour, []string{"fri", "sat", "sun", "mon"}, ""), ""},
		{"no duration", "02:00", nil, "", nil, "want HH:MM/DURATION"},
		{"hour 24", "24:00/1h", nil, "", nil, `start "24:00" is not HH:MM`},
		{"minute 60", "02:60/1h", nil, "", nil, "is not HH:MM"},
		{"one-digit minute", "02:5/1h", nil, "", nil, "is not HH:MM"},
		{"not a time", "two/1h", nil, "", nil, "is not HH:MM"},
		{"too long", "02:00/25h", nil, "", nil, "at most 24h"},
		{"zero length", "02:00/0s", nil, "", nil, "above 0"},
		{"bad day", "02:00/1h", []string{"mon", "funday"}, "", nil, `--window-days "funday"`},
		{"short day", "02:00/1h", []string{"mo"}, "", nil, "want days mon to sun"},
		{"bad range", "02:00/1h", []string{"mon-xyz"}, "", nil, "want days mon to sun"},
		{"bad zone", "02:00/1h", nil, "Mars/Olympus", nil, `--window-tz "Mars/Olympus"`},
		{"local zone", "02:00/1h", nil, "Local", nil, "name the zone"},
	}
	for _, tt := range tests {
		got, err := parseWindow(tt.window, tt.days, tt.tz)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: error %v, want %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !proto.Equal(got, tt.want) {
			t.Errorf("%s: %v %v, want %v", tt.name, got, err, tt.want)
		}
	}
}

// TestRolloutCreateFlags checks the whole command line of rollout create:
// every mistake is reported before any call (there is no server here).
func TestRolloutCreateFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no bundle", []string{"--group", "dev"}, "--bundle is required"},
		{"no target", []string{"--bundle", "b"}, "give exactly one target"},
		{"two targets", []string{"--bundle", "b", "--group", "dev", "--selector", "a=b"}, "give exactly one target"},
		{"three targets", []string{"--bundle", "b", "--group", "dev", "--selector", "a=b", "--devices", "d1"}, "give exactly one target"},
		{"bad selector", []string{"--bundle", "b", "--selector", "model in gw2"}, "--selector: selector: unable to parse requirement"},
		{"bad group", []string{"--bundle", "b", "--group", "a,b=c"}, "is not a label value"},
		{"bad device id", []string{"--bundle", "b", "--devices", "dev-1,-x"}, `"-x" is not a device id`},
		{"continuous devices", []string{"--bundle", "b", "--devices", "dev-1", "--continuous"}, "--continuous needs --selector"},
		{"wave above 100%", []string{"--bundle", "b", "--group", "dev", "--waves", "5,120%"}, `--waves: "120%"`},
		{"waves and rate", []string{"--bundle", "b", "--group", "dev", "--waves", "5", "--rate", "10"}, "give --waves or --rate, not both"},
		{"zero rate", []string{"--bundle", "b", "--group", "dev", "--rate", "0"}, "--rate 0: want devices per minute"},
		{"factor without rate", []string{"--bundle", "b", "--group", "dev", "--rate-factor", "2"}, "need --rate"},
		{"factor below 1", []string{"--bundle", "b", "--group", "dev", "--rate", "5", "--rate-factor", "0.5"}, "--rate-factor 0.5: want at least 1"},
		{"factor without raise", []string{"--bundle", "b", "--group", "dev", "--rate", "5", "--rate-factor", "2"}, "needs --rate-raise-after"},
		{"negative soak", []string{"--bundle", "b", "--group", "dev", "--soak", "-1m"}, "--soak -1m0s"},
		{"negative timeout", []string{"--bundle", "b", "--group", "dev", "--device-timeout", "-1m"}, "--device-timeout -1m0s"},
		{"bogus abort", []string{"--bundle", "b", "--group", "dev", "--abort", "failed:10%", "--abort", "bogus"}, `--abort "bogus"`},
		{"bad start", []string{"--bundle", "b", "--group", "dev", "--start-at", "tomorrow"}, `--start-at "tomorrow"`},
		{"days without window", []string{"--bundle", "b", "--group", "dev", "--window-days", "mon"}, "need --window"},
		{"zone without window", []string{"--bundle", "b", "--group", "dev", "--window-tz", "UTC"}, "need --window"},
		{"bad window", []string{"--bundle", "b", "--group", "dev", "--window", "2am/4h"}, `--window "2am/4h"`},
		{"argument", []string{"--bundle", "b", "--group", "dev", "extra"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// An unreachable server: an error from a call would say so.
			args := append([]string{"--server", "https://127.0.0.1:1", "--token", "x", "rollout", "create"}, tt.args...)
			out, err := runLocal(t, args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want %q\n%s", err, tt.wantErr, out)
			}
		})
	}
}

// TestRolloutCreateRequest checks what the flags become.
func TestRolloutCreateRequest(t *testing.T) {
	now := time.Date(2026, 11, 22, 21, 0, 0, 0, time.UTC)
	given := map[string]bool{"rate": true, "rate-factor": true, "rate-raise-after": true}
	o := &createOpts{
		bundle: "gw/2.bin", name: "canary", selector: "model=gw2,ring=canary", rate: 10, rateFactor: 2, rateRaiseAfter: 20,
		maxInFlight: 5, deviceTimeout: 30 * time.Minute, retries: 2, soak: 10 * time.Minute,
		abort: []string{"failed:10%:20", "timed_out:20%"}, startAt: "+2h",
		window: "02:00/4h", windowDays: []string{"mon", "tue"}, windowTZ: "Europe/Berlin", continuous: true,
		changed: func(name string) bool { return given[name] },
	}
	got, err := o.request(now)
	if err != nil {
		t.Fatal(err)
	}
	want := &fleetv1.CreateRolloutRequest{
		Name: "canary", Selector: "model=gw2,ring=canary", Continuous: true,
		Strategy: &fleetv1.RolloutStrategy{
			Rate:        &fleetv1.ExponentialRate{BasePerMinute: 10, Factor: 2, RaiseAfterSuccesses: 20},
			MaxInFlight: 5, DeviceTimeout: durationpb.New(30 * time.Minute), Retries: 2, Soak: durationpb.New(10 * time.Minute),
		},
		AbortRules: []*fleetv1.AbortRule{
			{Status: devicev1.JobStatus_JOB_STATUS_FAILED, Percent: 10, MinExecutions: 20},
			{Status: devicev1.JobStatus_JOB_STATUS_TIMED_OUT, Percent: 20, MinExecutions: 1},
		},
		StartTime:         timestamppb.New(now.Add(2 * time.Hour)),
		MaintenanceWindow: &fleetv1.MaintenanceWindow{Start: "02:00", Duration: durationpb.New(4 * time.Hour), Days: []string{"mon", "tue"}, TimeZone: "Europe/Berlin"},
	}
	if !proto.Equal(got, want) {
		t.Errorf("request\n%v\nwant\n%v", got, want)
	}

	// The least: a group, no strategy.
	got, err = (&createOpts{bundle: "b", group: "dev"}).request(now)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, &fleetv1.CreateRolloutRequest{Group: "dev"}) {
		t.Errorf("request %v", got)
	}
}

var rolloutID = regexp.MustCompile(`r-\d{8}-\d{6}-\d{3}-[0-9a-f]+`)

// TestRolloutCommands drives rollouts on a real ferryd: its development
// devices (group=dev) never connect here, so a rollout on them stays
// RUNNING until it is steered.
func TestRolloutCommands(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	dir := t.TempDir()
	passFile := filepath.Join(dir, "pass")
	fw := filepath.Join(dir, "fw.bin")
	for p, data := range map[string]string{passFile: "correct horse battery staple\n", fw: "gateway firmware"} {
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	repo := []string{"--repo-dir", filepath.Join(dir, "repo"), "--passphrase-file", passFile}
	var id, continuous, scheduled string
	// capture finds the id of the rollout whose row in the list has the
	// cell, its name or its target (ids made in the same second do not
	// sort by time).
	capture := func(into *string, cell string) func(t *testing.T) {
		return func(t *testing.T) {
			out, _ := run(t, f, "rollout", "list")
			for line := range strings.SplitSeq(out, "\n") {
				if strings.Contains(line, "  "+cell+"  ") {
					*into = rolloutID.FindString(line)
				}
			}
			if *into == "" {
				t.Fatalf("no rollout %s in\n%s", cell, out)
			}
		}
	}
	steps := []cmdStep{
		{"repo init", append([]string{"repo", "init"}, repo...), []string{"repository initialized"}, "", nil},
		{"publish 1.0.0", append([]string{"bundle", "publish", fw, "--name", "gw", "--version", "1.0.0", "-q"}, repo...), []string{"published gw/1.0.0/fw.bin"}, "", nil},
		{"publish 2.0.0", append([]string{"bundle", "publish", fw, "--name", "gw", "--version", "2.0.0", "-q"}, repo...), []string{"published gw/2.0.0/fw.bin"}, "", nil},
		{"list none", []string{"rollout", "list"}, []string{"ID  NAME  STATE  BUNDLE  TARGET  PROGRESS  CREATED"}, "", nil},
		{"unknown bundle", []string{"rollout", "create", "--bundle", "gw/9.0/fw.bin", "--group", "dev"}, nil, "--bundle: bundle gw/9.0/fw.bin: not_found", nil},
		{"unknown rollback bundle", []string{"rollout", "create", "--bundle", "gw/2.0.0/fw.bin", "--group", "dev", "--rollback-bundle", "nope/x"}, nil, "--rollback-bundle: bundle nope/x", nil},
		{"create", []string{"rollout", "create", "--bundle", "gw/2.0.0/fw.bin", "--group", "dev", "--name", "canary",
			"--waves", "1,50%,100%", "--abort", "failed:10%:2", "--abort", "timed_out:20%", "--rollback-bundle", "gw/1.0.0/fw.bin",
			"--soak", "10m", "--max-in-flight", "2", "--device-timeout", "30m", "--retries", "1"},
			[]string{"name             canary", "state            RUNNING", "gw/2.0.0/fw.bin (16 bytes, sha256 ", "target           group=dev",
				"waves 1,50%,100%; at most 2 in flight; device timeout 30m; 1 retry; soak 10m",
				"FAILED >= 10% of at least 2 ended; TIMED_OUT >= 20% of at least 1 ended",
				"rollback bundle  gw/1.0.0/fw.bin", "start            at creation", "window           any time", "by operator:dev-admin"}, "", capture(&id, "canary")},
	}
	runSteps(t, f, steps)

	// The controller starts it within a tick: three waves of the three
	// development devices, the first one's device given the job.
	waitRollout(t, f, id, "one device given the job", func(r *fleetv1.Rollout) bool { return r.GetCounts()["QUEUED"] == 1 })
	out, err := run(t, f, "rollout", "show", id)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, w := range []string{"group=dev (3 devices)", "WAVE  SIZE  STATE    SUCCEEDED  FAILED  IN FLIGHT  PENDING  SOAK UNTIL",
		"1*    1     RUNNING  0          0       1          0", "2     2     PENDING  0          0       0          2", "3     0     PENDING"} {
		if !strings.Contains(out, w) {
			t.Fatalf("show lacks %q:\n%s", w, out)
		}
	}

	steps = []cmdStep{
		{"list", []string{"rollout", "list"}, []string{id + "  canary  RUNNING  gw/2.0.0/fw.bin  group=dev  0/3 ok"}, "", nil},
		{"show as JSON", []string{"rollout", "show", id, "-o", "json"}, []string{`"id": "` + id + `"`}, "", func(t *testing.T) {
			out, _ := run(t, f, "rollout", "show", id, "-o", "json")
			var resp fleetv1.GetRolloutResponse
			if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			r := resp.GetRollout()
			if r.GetId() != id || len(r.GetWaves()) != 3 || r.GetTargetCount() != 3 || len(r.GetAbortRules()) != 2 ||
				r.GetRollbackBundle().GetTargetPath() != "gw/1.0.0/fw.bin" || r.GetBundle().GetLength() != 16 {
				t.Fatalf("rollout %v", r)
			}
		}},
		{"watch, interrupted", []string{"rollout", "show", id}, nil, "", func(t *testing.T) {
			cmd := newRootCmd()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs([]string{"--server", f.APIURL(), "--ca-file", f.Dev.CACert, "--token-file", f.Dev.OperatorToken, "rollout", "watch", id})
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			err := cmd.ExecuteContext(ctx)
			if err == nil || !strings.Contains(err.Error(), "stopped watching (interrupted); the rollout goes on") {
				t.Fatalf("watch: %v\n%s", err, out.String())
			}
			if !strings.Contains(out.String(), "  RUNNING  wave 1/3 RUNNING 0/1 ok 0 failed 1 in flight; all 0/3 ok") {
				t.Fatalf("watch printed\n%s", out.String())
			}
		}},
		{"pause", []string{"rollout", "pause", id}, []string{"rollout " + id + ": PAUSED (paused by operator:dev-admin)"}, "", nil},
		{"pause again", []string{"rollout", "pause", id}, []string{": PAUSED"}, "", nil},
		{"resume", []string{"rollout", "resume", id}, []string{"rollout " + id + ": RUNNING (resumed by operator:dev-admin)"}, "", nil},
		{"resume as JSON", []string{"rollout", "resume", id, "-o", "json"}, []string{`"state": "RUNNING"`}, "", nil},
		{"cancel", []string{"rollout", "cancel", id, "--rollback"}, []string{"rollout " + id + ": CANCELED (canceled by operator:dev-admin)"}, "", nil},
		{"resume canceled", []string{"rollout", "resume", id}, nil, "failed_precondition", nil},
		{"watch canceled", []string{"rollout", "watch", id}, nil, "rollout " + id + " CANCELED: canceled by operator:dev-admin", nil},
		{"devices", []string{"rollout", "devices", id}, []string{"DEVICE  WAVE  STATUS    ATTEMPTS  JOB", "replaced by the rollback bundle; rollback bundle given", "rollout canceled"}, "", nil},
		{"devices by status", []string{"rollout", "devices", id, "--status", "canceled", "--limit", "1", "-o", "json"}, []string{`"status": "CANCELED"`, `"nextPageToken"`}, "", nil},
		{"devices, bad status", []string{"rollout", "devices", id, "--status", "bogus"}, nil, "invalid_argument: status: must be one of", nil},
		{"set desired from the repository", []string{"device", "set-desired", "dev-3", "--bundle", "gw/1.0.0/fw.bin", "-o", "json"},
			[]string{`"targetPath": "gw/1.0.0/fw.bin"`, `"length": "16"`}, "", nil},
		{"set desired, bundle and target", []string{"device", "set-desired", "dev-3", "--bundle", "gw/1.0.0/fw.bin", "--target", "x"},
			nil, "not both", nil},
		{"set desired, unknown bundle", []string{"device", "set-desired", "dev-3", "--bundle", "gw/7.0/fw.bin"}, nil, "--bundle: bundle gw/7.0/fw.bin: not_found", nil},
		{"unknown rollout", []string{"rollout", "show", "r-20260101-000000-000000"}, nil, "not_found", nil},
		{"pause unknown", []string{"rollout", "pause", "r-20260101-000000-000000"}, nil, "not_found", nil},
		{"missing id", []string{"rollout", "show"}, nil, "accepts 1 arg", nil},

		// No device matches: the rollout is refused, unless it is
		// continuous and waits for devices.
		{"create matching no device", []string{"rollout", "create", "--bundle", "gw/2.0.0/fw.bin", "--selector", "ring=nowhere", "--watch"},
			nil, "failed_precondition: selector: ring=nowhere matches no device", nil},
		{"create continuous matching no device", []string{"rollout", "create", "--bundle", "gw/2.0.0/fw.bin", "--selector", "ring=nowhere", "--continuous"},
			[]string{"target           ring=nowhere, continuous", "state            RUNNING"}, "", func(t *testing.T) {
				// The controller starts it on its next tick, not at
				// creation; until then it has no waves (progress "-").
				capture(&continuous, "ring=nowhere")(t)
				waitRollout(t, f, continuous, "started", func(r *fleetv1.Rollout) bool { return r.GetBeginTime() != nil })
			}},

		// Scheduled: it waits, and shows its schedule.
		{"create scheduled", []string{"rollout", "create", "--bundle", "gw/2.0.0/fw.bin", "--devices", "dev-1,dev-2", "--name", "later",
			"--rate", "10", "--rate-factor", "2", "--rate-raise-after", "5", "--start-at", "+1h",
			"--window", "02:00/4h", "--window-days", "mon-fri", "--window-tz", "Europe/Berlin"},
			[]string{"state            SCHEDULED", "target           2 devices: dev-1,dev-2", "rate 10/min, x2 after every 5 successes",
				"window           02:00 for 4h on mon,tue,wed,thu,fri (Europe/Berlin)"}, "", capture(&scheduled, "later")},
	}
	runSteps(t, f, steps)

	// Completion offers the rollouts a command can act on.
	complete := func(args ...string) string {
		t.Helper()
		out, err := runLocal(t, append([]string{"__complete", "--server", f.APIURL(), "--ca-file", f.Dev.CACert,
			"--token-file", f.Dev.OperatorToken}, args...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return out
	}
	if out := complete("rollout", "show", ""); !strings.Contains(out, id+"\t") || !strings.Contains(out, scheduled+"\t") {
		t.Errorf("show completion lacks the rollouts:\n%s", out)
	}
	if out := complete("rollout", "pause", ""); strings.Contains(out, id) || !strings.Contains(out, scheduled+"\tlater, SCHEDULED gw/2.0.0/fw.bin") {
		t.Errorf("pause completion: want only the scheduled rollout:\n%s", out)
	}
	if out := complete("rollout", "create", "--bundle", ""); !strings.Contains(out, "gw/1.0.0/fw.bin\ngw/2.0.0/fw.bin\n:4") {
		t.Errorf("bundle completion:\n%s", out)
	}

	steps = []cmdStep{
		{"list limited", []string{"rollout", "list", "--limit", "2"}, []string{"(more rollouts: raise --limit"}, "", func(t *testing.T) {
			out, _ := run(t, f, "rollout", "list", "--limit", "2")
			if n := len(rolloutID.FindAllString(out, -1)); n != 2 {
				t.Fatalf("--limit 2 lists %d rollouts:\n%s", n, out)
			}
		}},
		{"list all", []string{"rollout", "list"}, nil, "", func(t *testing.T) {
			out, _ := run(t, f, "rollout", "list")
			var rows []string
			for line := range strings.SplitSeq(out, "\n") {
				rows = append(rows, strings.Join(strings.Fields(line), " "))
			}
			all := strings.Join(rows, "\n")
			for _, w := range []string{scheduled + " later SCHEDULED gw/2.0.0/fw.bin 2 devices - ",
				continuous + " - RUNNING gw/2.0.0/fw.bin ring=nowhere 0/0 ok ", id + " canary CANCELED gw/2.0.0/fw.bin group=dev 0/3 ok "} {
				if !strings.Contains(all, w) {
					t.Fatalf("list lacks %q:\n%s", w, out)
				}
			}
		}},
		{"list as JSON", []string{"rollout", "list", "--limit", "0", "-o", "json"}, []string{`"rollouts"`}, "", func(t *testing.T) {
			out, _ := run(t, f, "rollout", "list", "--limit", "0", "-o", "json")
			var resp fleetv1.ListRolloutsResponse
			if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if n := len(resp.GetRollouts()); n != 3 || resp.GetNextPageToken() != "" {
				t.Fatalf("%d rollouts, next %q:\n%s", n, resp.GetNextPageToken(), out)
			}
		}},
		{"cancel without a rollback bundle", []string{"rollout", "cancel", scheduled, "--rollback"}, nil, "invalid_argument", nil},
		{"cancel scheduled as JSON", []string{"rollout", "cancel", scheduled, "-o", "json"}, []string{`"state": "CANCELED"`}, "", nil},
	}
	runSteps(t, f, steps)

	// watch -o json: one JSON object a line.
	out, err = run(t, f, "rollout", "watch", id, "-o", "json")
	if err == nil || !strings.Contains(err.Error(), "CANCELED") {
		t.Fatalf("watch: %v", err)
	}
	lines := 0
	for sc := bufio.NewScanner(strings.NewReader(out)); sc.Scan(); lines++ {
		var resp fleetv1.WatchRolloutResponse
		if err := protojson.Unmarshal(sc.Bytes(), &resp); err != nil || resp.GetRollout().GetId() != id {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if !json.Valid(sc.Bytes()) {
			t.Fatalf("line %q is not JSON", sc.Text())
		}
	}
	if lines == 0 {
		t.Fatal("watch -o json printed nothing")
	}
}

// shortTimeout sends a shorter Connect timeout than the caller's context
// has, as ferryd's copy of a deadline (whole milliseconds, started on
// arrival) may end just before the caller's own.
type shortTimeout struct{ next http.RoundTripper }

func (s shortTimeout) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("Connect-Timeout-Ms", "300")
	return s.next.RoundTrip(req)
}

// TestWatchServerDeadline checks that rollout watch reports a watch ended
// by the caller's deadline as interrupted, also when ferryd's copy of the
// deadline ends the stream first.
func TestWatchServerDeadline(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.Publish(t, "gw/2.0.0/fw.bin")
	client := fleetv1connect.NewRolloutServiceClient(&http.Client{Transport: shortTimeout{f.HTTPClient(t).Transport}},
		f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
	created, err := client.CreateRollout(t.Context(), connect.NewRequest(&fleetv1.CreateRolloutRequest{
		Bundle: ferrytest.Bundle("gw/2.0.0/fw.bin"), Selector: "group=dev"}))
	if err != nil {
		t.Fatal(err)
	}
	id := created.Msg.GetRollout().GetId()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := &cobra.Command{}
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetContext(ctx)
	err = watchRollout(cmd, &app{}, client, id)
	if err == nil || !strings.Contains(err.Error(), "rollout "+id+": stopped watching (interrupted); the rollout goes on") {
		t.Fatalf("watch: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "  RUNNING") {
		t.Fatalf("watch printed\n%s", out.String())
	}
}

// waitRollout polls the rollout until done reports true of it, failing
// the test after a deadline with what it last saw.
func waitRollout(t *testing.T, f *ferrytest.Ferryd, id, what string, done func(*fleetv1.Rollout) bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, err := run(t, f, "rollout", "show", id, "-o", "json")
		if err != nil {
			t.Fatalf("show %s: %v\n%s", id, err, out)
		}
		var resp fleetv1.GetRolloutResponse
		if err := protojson.Unmarshal([]byte(out), &resp); err != nil {
			t.Fatalf("show %s: %v\n%s", id, err, out)
		}
		if done(resp.GetRollout()) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s not %s after 15s:\n%s", id, what, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWatchLine(t *testing.T) {
	at := time.Date(2026, 11, 22, 21, 40, 5, 0, time.Local)
	r := &fleetv1.Rollout{
		State: "RUNNING", UpdateTime: timestamppb.New(at), CurrentWave: 0, TargetCount: 100,
		Counts: map[string]uint64{"SUCCEEDED": 12, "FAILED": 1, "QUEUED": 3, "IN_PROGRESS": 2},
		Waves: []*fleetv1.WaveProgress{
			{State: "RUNNING", Size: 50, Counts: map[string]uint64{"SUCCEEDED": 12, "FAILED": 1, "QUEUED": 3, "IN_PROGRESS": 2, "PENDING": 32}},
			{State: "PENDING", Size: 25}, {State: "PENDING", Size: 25},
		},
	}
	want := "2026-11-22 21:40:05  RUNNING  wave 1/3 RUNNING 12/50 ok 1 failed 5 in flight; all 12/100 ok"
	if got := watchLine(r, time.Now()); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	r.Incompatible = 7
	if got := watchLine(r, time.Now()); got != want+"; 7 incompatible (left out)" {
		t.Errorf("with incompatible devices: %q", got)
	}
	r.State, r.StateReason = "ABORTED", "3 of 10 executions ended FAILED"
	if got := watchLine(r, time.Now()); !strings.HasSuffix(got, "  (3 of 10 executions ended FAILED)") {
		t.Errorf("aborted: %q", got)
	}
}
