package replica_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
)

func TestConsentPolicyValidation(t *testing.T) {
	tests := []struct {
		name    string
		policy  *store.ConsentPolicy
		wantErr string
	}{
		{"none", nil, ""},
		{"install", &store.ConsentPolicy{BeforeInstall: true}, ""},
		{"both with a deadline", &store.ConsentPolicy{BeforeInstall: true, BeforeReboot: true, MaxDeferral: time.Hour}, ""},
		{"asks nothing", &store.ConsentPolicy{MaxDeferral: time.Hour}, "document.consent: asks for consent neither"},
		{"negative deferral", &store.ConsentPolicy{BeforeReboot: true, MaxDeferral: -1}, "document.consent.max_deferral"},
		{"deferral too long", &store.ConsentPolicy{BeforeReboot: true, MaxDeferral: replica.MaxConsentDeferral + time.Second}, "document.consent.max_deferral"},
	}
	for _, tt := range tests {
		d := doc("gw/fw.bin")
		d.Consent = tt.policy
		err := d.Validate()
		var ie *replica.InvalidError
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.wantErr != "" && (!errors.As(err, &ie) || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: error %v, want InvalidError %q", tt.name, err, tt.wantErr)
		}
	}
}

// TestConsentProgress records a device's consent answers as their own
// history entries, with who answered and when, and refuses malformed ones
// without writing anything.
func TestConsentProgress(t *testing.T) {
	r := newReplica(t)
	ctx := t.Context()
	if _, err := r.Register(ctx, "dev-1", nil); err != nil {
		t.Fatal(err)
	}
	d := doc("gw/fw.bin")
	d.Consent = &store.ConsentPolicy{BeforeInstall: true}
	dev, err := r.SetDesired(ctx, "dev-1", d, "operator:op", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := dev.Desired.Consent; c == nil || !c.BeforeInstall {
		t.Fatalf("desired consent %+v, want before install", c)
	}
	at := time.Now().UTC().Truncate(time.Second)
	base := replica.Progress{JobID: dev.Desired.JobID, DesiredVersion: dev.Desired.Version, Step: replica.StepAwaitingConsent}
	for _, bad := range []*replica.Consent{
		{Decision: "MAYBE", At: at},
		{Decision: replica.ConsentAccepted, Action: "dance", At: at},
		{Decision: replica.ConsentAccepted, Actor: strings.Repeat("x", replica.MaxTextBytes+1), At: at},
	} {
		p := base
		p.Consent = bad
		var ie *replica.InvalidError
		if _, err := r.Progress(ctx, "dev-1", p); !errors.As(err, &ie) {
			t.Errorf("consent %+v: error %v, want InvalidError", bad, err)
		}
	}
	for _, c := range []*replica.Consent{
		{Decision: replica.ConsentDeferred, Actor: "alice", At: at, DeferredUntil: at.Add(time.Hour), Action: "install"},
		{Decision: replica.ConsentAccepted, Actor: "alice", At: at.Add(time.Hour), Action: "install"},
	} {
		p := base
		p.Consent, p.Code = c, "consent."+strings.ToLower(string(c.Decision))
		if ok, err := r.Progress(ctx, "dev-1", p); err != nil || !ok {
			t.Fatalf("consent %+v: %v, %v", c, ok, err)
		}
	}
	evs, err := r.ListEvents(ctx, "dev-1", 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range evs {
		if ev.Kind == replica.EventJobConsent {
			got = append(got, ev.Step+" "+ev.ErrorCode+" "+ev.Message)
		}
	}
	want := []string{
		"AWAITING_CONSENT consent.accepted install accepted by alice at " + at.Add(time.Hour).Format(time.RFC3339),
		"AWAITING_CONSENT consent.deferred install deferred by alice at " + at.Format(time.RFC3339) + " until " + at.Add(time.Hour).Format(time.RFC3339),
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("consent history (newest first):\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	cur, err := r.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if j := cur.Reported.Job; j.Step != string(replica.StepAwaitingConsent) || !strings.Contains(j.Message, "accepted by alice") {
		t.Errorf("job %+v, want AWAITING_CONSENT accepted by alice", j)
	}
}
