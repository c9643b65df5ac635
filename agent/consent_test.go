package agent_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/agent"
)

func TestParseConsentAnswer(t *testing.T) {
	tests := []struct {
		in      string
		want    agent.ConsentAnswer
		wantErr string
	}{
		{"accept alice\n", agent.ConsentAnswer{Decision: agent.DecisionAccepted, Actor: "alice"}, ""},
		{"\n  yes  \n", agent.ConsentAnswer{Decision: agent.DecisionAccepted}, ""},
		{"later 10m night shift", agent.ConsentAnswer{Decision: agent.DecisionDeferred, Later: 10 * time.Minute, Actor: "night shift"}, ""},
		{"later bob", agent.ConsentAnswer{Decision: agent.DecisionDeferred, Actor: "bob"}, ""},
		{"decline kiosk-app\nignored", agent.ConsentAnswer{Decision: agent.DecisionDeclined, Actor: "kiosk-app"}, ""},
		{"", agent.ConsentAnswer{}, "empty"},
		{"maybe", agent.ConsentAnswer{}, `consent answer "maybe"`},
		{"later -5m", agent.ConsentAnswer{}, "positive duration"},
		{"accept " + strings.Repeat("x", 300), agent.ConsentAnswer{}, "longer than 256"},
	}
	for _, tt := range tests {
		got, err := agent.ParseConsentAnswer(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q: %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

// TestConsentHook runs a real hook script: it sees the action, the
// deadline and the job, and its answer is parsed.
func TestConsentHook(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "consent.sh")
	if err := os.WriteFile(script, []byte(`#!/bin/sh
[ "$1" = consent ] || { echo "bad argument $1" >&2; exit 2; }
case "$FERRY_CONSENT_ACTION" in
install) echo "later 2m $FERRY_JOB_ID until $FERRY_CONSENT_DEADLINE" ;;
reboot) echo "accept operator-$FERRY_CONFIG_SITE" ;;
*) echo "no action" >&2; exit 3 ;;
esac
`), 0o755); err != nil {
		t.Fatal(err)
	}
	hook := agent.ConsentHook{Command: []string{script}}
	deadline := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	job := agent.Job{ID: "job-1", DesiredVersion: 3, Config: map[string]string{"site": "b"}}
	got, err := hook.Ask(t.Context(), agent.ConsentRequest{Action: agent.ConsentInstall, Job: job, Deadline: deadline})
	if want := (agent.ConsentAnswer{Decision: agent.DecisionDeferred, Later: 2 * time.Minute, Actor: "job-1 until " + deadline.Format(time.RFC3339)}); err != nil || got != want {
		t.Errorf("install: %+v, %v; want %+v", got, err, want)
	}
	got, err = hook.Ask(t.Context(), agent.ConsentRequest{Action: agent.ConsentReboot, Job: job})
	if want := (agent.ConsentAnswer{Decision: agent.DecisionAccepted, Actor: "operator-b"}); err != nil || got != want {
		t.Errorf("reboot: %+v, %v; want %+v", got, err, want)
	}
	if _, err := hook.Ask(t.Context(), agent.ConsentRequest{Action: "dance", Job: job}); err == nil || !strings.Contains(err.Error(), "no action") {
		t.Errorf("failing hook: %v, want its stderr in the error", err)
	}
}

func TestParseWindow(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string
	}{
		{"02:00/3h", ""},
		{"22:30/4h/mon-fri,sun@Europe/Berlin", ""},
		{"23:00/2h/fri-mon", ""},
		{"2:0/3h", "is not HH:MM"},
		{"24:00/1h", "is not HH:MM"},
		{"02:00/25h", "between 1s and 24h"},
		{"02:00", "want HH:MM/DURATION"},
		{"02:00/1h/funday", "is not mon..sun"},
		{"02:00/1h@Mars/Olympus", "unknown time zone"},
	}
	for _, tt := range tests {
		w, err := agent.ParseWindow(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%q: error %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || w.String() != tt.in {
			t.Errorf("%q: %v, %v", tt.in, w, err)
		}
	}
}

// TestWindowNext checks when windows are open and when they open next,
// relative to a day the test picks from the clock (any date works).
func TestWindowNext(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	// The next Wednesday from now, at midnight UTC.
	now := time.Now().UTC()
	wed := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	for wed.Weekday() != time.Wednesday {
		wed = wed.AddDate(0, 0, 1)
	}
	at := func(days int, hm string) time.Time {
		d, _ := time.ParseDuration(strings.Replace(hm, ":", "h", 1) + "m")
		return wed.AddDate(0, 0, days).Add(d)
	}
	tests := []struct {
		window    string
		now       time.Time
		open      bool
		wantOpens time.Time
	}{
		{"02:00/3h", at(0, "03:00"), true, time.Time{}},
		{"02:00/3h", at(0, "05:00"), false, at(1, "02:00")},
		{"02:00/3h", at(0, "01:59"), false, at(0, "02:00")},
		{"23:00/2h", at(1, "00:30"), true, time.Time{}}, // opened the day before
		{"02:00/1h/sat,sun", at(0, "02:30"), false, at(3, "02:00")},
		{"02:00/1h/mon-tue", at(0, "02:30"), false, at(5, "02:00")},
		{"23:00/2h/tue", at(0, "00:30"), true, time.Time{}}, // Tuesday's window, past midnight
	}
	for _, tt := range tests {
		w, err := agent.ParseWindow(tt.window)
		if err != nil {
			t.Fatal(err)
		}
		open, opens := w.Next(tt.now)
		if open != tt.open || !opens.Equal(tt.wantOpens) {
			t.Errorf("%s at %v: open %v, opens %v; want %v, %v", tt.window, tt.now, open, opens, tt.open, tt.wantOpens)
		}
	}
	// In a time zone: 02:00 Berlin is 00:00 or 01:00 UTC.
	w, err := agent.ParseWindow("02:00/1h@Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	_, opens := w.Next(at(0, "12:00"))
	local := opens.In(berlin)
	if local.Hour() != 2 || local.Minute() != 0 || !opens.After(at(0, "12:00")) || opens.Sub(at(0, "12:00")) > 24*time.Hour {
		t.Errorf("Berlin window opens %v (%v local), want the next 02:00 in Berlin", opens, local)
	}
}
