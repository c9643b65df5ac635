package docs_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// TestReportSchemaMatchesAgent: every kind of report the reference agent
// signs verifies with Ferry's verifier, and its statement and predicate
// are valid under the committed schemas.
func TestReportSchemaMatchesAgent(t *testing.T) {
	predicateSchema, statementSchema := schemas(t)
	now := time.Now()
	ca, err := credentials.NewCA("device CA", 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := credentials.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueDevice("ferry.test", "dev-1", key.Public(), time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := agent.NewCredentials(key, [][]byte{cert.Raw})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	fw2 := &agent.Bundle{TargetPath: "gateway/firmware-2.1.0.swu", Length: 1 << 20, SHA256: sum}
	fw1 := &agent.Bundle{TargetPath: "gateway/firmware-2.0.0.swu", Length: 1 << 20, SHA256: strings.Repeat("ab", 32)}
	tests := []struct {
		name string
		res  agent.Result
		// subject is the name the statement's one subject must carry.
		subject string
	}{
		{"succeeded with a bundle and configuration", agent.Result{JobID: "job-1", DesiredVersion: 2, Status: agent.StatusSucceeded,
			State: agent.State{Bundle: fw2, Version: "2.1.0", Config: map[string]string{"log.level": "info"}}}, fw2.TargetPath},
		{"configuration only", agent.Result{JobID: "job-2", DesiredVersion: 3, Status: agent.StatusSucceeded,
			State: agent.State{Config: map[string]string{"log.level": "debug", "region": "eu-1"}}}, "config"},
		{"nothing installed at all", agent.Result{JobID: "job-3", DesiredVersion: 1, Status: agent.StatusFailed,
			Step: agent.StepDownloading, ErrorCode: agent.CodeDownloadFailed, Message: "download after 5 attempts: HTTP 503"}, "config"},
		{"failed in a step with a code", agent.Result{JobID: "job-4", DesiredVersion: 4, Status: agent.StatusFailed,
			Step: agent.StepVerifying, ErrorCode: agent.CodeHashMismatch, Message: "sha256 differs from the signed metadata",
			State: agent.State{Bundle: fw1, Version: "2.0.0"}}, fw1.TargetPath},
		{"rolled back after the health check", agent.Result{JobID: "job-5", DesiredVersion: 5, Status: agent.StatusRolledBack,
			Step: agent.StepConfirming, ErrorCode: agent.CodeHealthFailed, Message: "health check: exit status 1",
			State: agent.State{Bundle: fw1, Version: "2.0.0"}}, fw1.TargetPath},
		{"rejected by the device", agent.Result{JobID: "job-6", DesiredVersion: 6, Status: agent.StatusRejected,
			ErrorCode: agent.CodeDowngradeNotForced, Message: "1.9.0 is older than 2.0.0",
			State: agent.State{Bundle: fw1, Version: "2.0.0"}}, fw1.TargetPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := agent.SignReport(creds, "dev-1", "bm9uY2Utb2YtdGhlLXN0cmVhbQ", tt.res, now)
			if err != nil {
				t.Fatal(err)
			}
			st, _, err := attest.Verify(env, [][]byte{cert.Raw}, roots, "ferry.test", time.Time{})
			if err != nil {
				t.Fatalf("Ferry's verifier refuses the agent's report: %v", err)
			}
			if len(st.Subject) != 1 || st.Subject[0].Name != tt.subject {
				t.Errorf("subject %+v, want one named %q", st.Subject, tt.subject)
			}
			payload := payloadOf(t, env)
			if err := statementSchema.Validate(instance(t, payload)); err != nil {
				t.Errorf("the statement the agent signs is not valid under the schema: %v\n%s", err, payload)
			}
			var raw struct {
				Predicate json.RawMessage `json:"predicate"`
			}
			if err := json.Unmarshal(payload, &raw); err != nil {
				t.Fatal(err)
			}
			if err := predicateSchema.Validate(instance(t, raw.Predicate)); err != nil {
				t.Errorf("the predicate the agent signs is not valid under the schema: %v\n%s", err, raw.Predicate)
			}
		})
	}
}

// TestReportSchemaAgreesWithFerryd: each bad statement below is refused by
// the committed schema and by a real ferryd (on the stream, signed with the
// device's key, with the stream's nonce), with the reject code that
// docs/protocol.md gives; none changes the device; the good statement they
// were made from is valid and accepted.
func TestReportSchemaAgreesWithFerryd(t *testing.T) {
	_, statementSchema := schemas(t)
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	ctx := context.Background()
	desired := map[string]string{"log.level": "debug"}
	if _, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Config: desired},
	})); err != nil {
		t.Fatal(err)
	}
	dev := f.OpenDevice(t, "dev-1", &devicev1.Hello{})
	delta := dev.Recv().GetDelta()
	if delta == nil {
		t.Fatal("no Delta")
	}
	good := attest.NewStatement(attest.Report{
		Device: "dev-1", JobID: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: "SUCCEEDED",
		Time: time.Now().UTC(), Nonce: dev.Nonce, Config: desired,
	})
	goodJSON, err := json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	// Each row edits the good statement as generic JSON. With resubject,
	// the subject is then made to name what the edited predicate says the
	// device runs, so the row is refused for its own reason only.
	const (
		unverified = devicev1.RejectCode_REJECT_CODE_UNVERIFIED
		invalid    = devicev1.RejectCode_REJECT_CODE_INVALID
	)
	withBundle := func(p map[string]any) map[string]any {
		b := map[string]any{"targetPath": "gateway/fw.swu", "length": 10, "sha256": sum}
		p["bundle"] = b
		return b
	}
	tests := []struct {
		name      string
		edit      func(st, p map[string]any)
		resubject bool
		code      devicev1.RejectCode
	}{
		{"unknown predicate field", func(_, p map[string]any) { p["firmware"] = "2.1.0" }, false, unverified},
		{"unknown bundle field", func(_, p map[string]any) { withBundle(p)["version"] = "2.1.0" }, true, unverified},
		{"unknown statement field", func(st, _ map[string]any) { st["signedAt"] = "now" }, false, unverified},
		{"desiredVersion as a string", func(_, p map[string]any) { p["desiredVersion"] = "1" }, false, unverified},
		{"negative desiredVersion", func(_, p map[string]any) { p["desiredVersion"] = -1 }, false, unverified},
		{"fractional desiredVersion", func(_, p map[string]any) { p["desiredVersion"] = 1.5 }, false, unverified},
		{"desiredVersion beyond 64 bits", func(_, p map[string]any) { p["desiredVersion"] = json.Number("18446744073709551616") }, false, unverified},
		{"desiredVersion zero", func(_, p map[string]any) { p["desiredVersion"] = 0 }, false, invalid},
		{"no jobId", func(_, p map[string]any) { delete(p, "jobId") }, false, invalid},
		{"jobId as a number", func(_, p map[string]any) { p["jobId"] = 7 }, false, unverified},
		{"no status", func(_, p map[string]any) { delete(p, "status") }, false, invalid},
		{"status in lower case", func(_, p map[string]any) { p["status"] = "succeeded" }, false, invalid},
		{"status with the proto prefix", func(_, p map[string]any) { p["status"] = "JOB_STATUS_SUCCEEDED" }, false, invalid},
		{"status that does not end a job", func(_, p map[string]any) { p["status"] = "IN_PROGRESS" }, false, invalid},
		{"status as the enum number", func(_, p map[string]any) { p["status"] = 3 }, false, unverified},
		{"step as the enum number", func(_, p map[string]any) { p["step"] = 1 }, false, unverified},
		{"message over 1 KiB", func(_, p map[string]any) { p["message"] = strings.Repeat("x", 1025) }, false, invalid},
		{"errorCode over 1 KiB", func(_, p map[string]any) { p["errorCode"] = strings.Repeat("x", 1025) }, false, invalid},
		{"no device", func(_, p map[string]any) { delete(p, "device") }, false, unverified},
		{"another device", func(_, p map[string]any) { p["device"] = "dev-2" }, false, unverified},
		{"no nonce", func(_, p map[string]any) { delete(p, "nonce") }, false, unverified},
		{"another stream's nonce", func(_, p map[string]any) { p["nonce"] = "bm90LXRoaXMtc3RyZWFt" }, false, unverified},
		{"time without a zone", func(_, p map[string]any) { p["time"] = "2026-01-02T03:04:05" }, false, unverified},
		{"time as a Unix number", func(_, p map[string]any) { p["time"] = 1767323045 }, false, unverified},
		{"config value a number", func(_, p map[string]any) { p["config"] = map[string]any{"retries": 3} }, false, unverified},
		{"config as a list", func(_, p map[string]any) { p["config"] = []any{"log.level=debug"} }, false, unverified},
		{"config with an empty key", func(_, p map[string]any) { p["config"] = map[string]any{"": "x"} }, true, invalid},
		{"config over 256 entries", func(_, p map[string]any) {
			c := map[string]any{}
			for i := range 257 {
				c[fmt.Sprintf("k%d", i)] = "v"
			}
			p["config"] = c
		}, true, invalid},
		{"config value over 4 KiB", func(_, p map[string]any) { p["config"] = map[string]any{"k": strings.Repeat("v", 4097)} }, true, invalid},
		{"bundle length zero", func(_, p map[string]any) { withBundle(p)["length"] = 0 }, true, invalid},
		{"bundle length as a string", func(_, p map[string]any) { withBundle(p)["length"] = "10" }, false, unverified},
		{"bundle digest in upper case", func(_, p map[string]any) { withBundle(p)["sha256"] = strings.ToUpper(sum) }, true, invalid},
		{"bundle digest too short", func(_, p map[string]any) { withBundle(p)["sha256"] = sum[:63] }, true, invalid},
		{"bundle path absolute", func(_, p map[string]any) { withBundle(p)["targetPath"] = "/gateway/fw.swu" }, true, invalid},
		{"bundle path climbs out", func(_, p map[string]any) { withBundle(p)["targetPath"] = "../fw.swu" }, true, invalid},
		{"bundle path not clean", func(_, p map[string]any) { withBundle(p)["targetPath"] = "gateway//fw.swu" }, true, invalid},
		{"bundle path with a dot element", func(_, p map[string]any) { withBundle(p)["targetPath"] = "gateway/./fw.swu" }, true, invalid},
		{"bundle path with a backslash", func(_, p map[string]any) { withBundle(p)["targetPath"] = `gateway\fw.swu` }, true, invalid},
		{"bundle without its digest", func(_, p map[string]any) { delete(withBundle(p), "sha256") }, true, invalid},
		{"predicate is a list", func(st, _ map[string]any) { st["predicate"] = []any{} }, false, unverified},
		{"no subject", func(st, _ map[string]any) { st["subject"] = []any{} }, false, unverified},
		{"two subjects", func(st, _ map[string]any) {
			s := st["subject"].([]any)
			st["subject"] = append(s, s[0])
		}, false, unverified},
		{"subject with a second digest", func(st, _ map[string]any) {
			st["subject"].([]any)[0].(map[string]any)["digest"].(map[string]any)["sha512"] = strings.Repeat("0", 128)
		}, false, unverified},
		{"subject digest of something else", func(st, _ map[string]any) {
			st["subject"].([]any)[0].(map[string]any)["digest"] = map[string]any{"sha256": sum}
		}, false, unverified},
		{"subject names the bundle on a configuration-only report", func(st, _ map[string]any) {
			st["subject"] = []any{map[string]any{"name": "gateway/fw.swu", "digest": map[string]any{"sha256": sum}}}
		}, false, unverified},
		{"in-toto statement v0.1", func(st, _ map[string]any) { st["_type"] = "https://in-toto.io/Statement/v0.1" }, false, unverified},
		{"another predicate type", func(st, _ map[string]any) { st["predicateType"] = "https://slsa.dev/provenance/v1" }, false, unverified},
	}
	// What a schema cannot know: who signs, on which stream, and that the
	// subject names what the predicate says.
	beyondSchema := map[string]bool{
		"another device": true, "another stream's nonce": true,
		"subject digest of something else": true, "subject names the bundle on a configuration-only report": true,
	}
	for _, tt := range tests {
		var st map[string]any
		if err := json.Unmarshal(goodJSON, &st); err != nil {
			t.Fatal(err)
		}
		p := st["predicate"].(map[string]any)
		tt.edit(st, p)
		if tt.resubject {
			raw, _ := json.Marshal(p)
			var r attest.Report
			if err := json.Unmarshal(raw, &r); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			sub := attest.NewStatement(r).Subject[0]
			st["subject"] = []any{map[string]any{"name": sub.Name, "digest": map[string]any{"sha256": sub.Digest["sha256"]}}}
		}
		payload, err := json.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if !beyondSchema[tt.name] && statementSchema.Validate(instance(t, payload)) == nil {
			t.Errorf("%s: the schema accepts what ferryd refuses:\n%s", tt.name, payload)
		}
		dev.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{Envelope: sealDER(t, dev.Key, payload)}}})
		resp := dev.Recv()
		if rej := resp.GetRejected(); rej.GetCode() != tt.code {
			t.Errorf("%s: ferryd answered %v, want Rejected %v", tt.name, resp, tt.code)
		}
	}
	got, err := f.Fleet(t).GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
	if err != nil {
		t.Fatal(err)
	}
	if r := got.Msg.GetDevice().GetReported(); r.GetDesiredVersion() != 0 || len(r.GetState().GetConfig()) != 0 {
		t.Fatalf("refused reports changed the device: %v", r)
	}
	if err := statementSchema.Validate(instance(t, goodJSON)); err != nil {
		t.Fatalf("the schema refuses the good statement: %v", err)
	}
	dev.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{Envelope: sealDER(t, dev.Key, goodJSON)}}})
	if resp := dev.Recv(); resp.GetAccepted() == nil {
		t.Fatalf("the good statement, signed as protocol.md says: %v, want Accepted", resp)
	}
}
