package main

import (
	"context"
	"crypto"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature/kms"

	"github.com/ferryhq/ferry/audit"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/store"
)

// TestAuditExportVerifyAndTamper records operator calls, lists them,
// exports a bundle, verifies it offline, and tampers with it three ways.
func TestAuditExportVerifyAndTamper(t *testing.T) {
	var viewerKey, auditorKey, dataDir string
	f := ferrytest.Start(t, ferrytest.Embedded, func(c *server.Config) {
		viewerKey = ferrytest.AddOperator(t, c, "vera", credentials.RoleViewer)
		auditorKey = ferrytest.AddOperator(t, c, "otto", credentials.RoleAuditor)
		dataDir = c.DataDir
	})
	dir := t.TempDir()
	keyFile := func(name, key string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(key), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	viewer, auditor := keyFile("viewer", viewerKey), keyFile("auditor", auditorKey)

	for _, args := range [][]string{
		{"device", "add", "gw-1", "--label", "model=gw2"},
		{"device", "add", "gw-2"},
		{"device", "add", "gw-3"},
		{"device", "revoke", "gw-2", "--reason", "stolen"},
	} {
		if out, err := run(t, f, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	if _, err := run(t, f, "--token-file", viewer, "device", "add", "gw-9"); err == nil || !strings.Contains(err.Error(), "permission_denied") {
		t.Fatalf("viewer adding a device: %v", err)
	}

	// A job that ends with a signed report: its attestation goes into
	// the export.
	f.Publish(t, "gw/fw-2.bin")
	d := f.OpenDevice(t, "dev-1", &devicev1.Hello{})
	if out, err := run(t, f, "device", "set-desired", "dev-1", "--bundle", "gw/fw-2.bin"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	delta := d.Recv().GetDelta()
	d.SendReport(&devicev1.Report{JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
		Reported: &devicev1.ReportedState{Bundle: delta.GetDesired().GetBundle()}})
	if d.Recv().GetAccepted() == nil {
		t.Fatal("the report was not accepted")
	}

	t.Run("list", func(t *testing.T) {
		tests := []struct {
			name    string
			args    []string
			want    []string
			notWant []string
		}{
			{"everything", nil, []string{"AddDevice", "RevokeDevice", "operator:vera", "permission_denied", "gw-2", "PublishTargets", "SetDesiredState  dev-1"}, nil},
			{"by action", []string{"--action", "RevokeDevice"}, []string{"RevokeDevice  gw-2"}, []string{"AddDevice"}},
			{"by actor", []string{"--actor", "operator:vera"}, []string{"AddDevice", "viewer", "permission_denied"}, []string{"RevokeDevice"}},
			{"by result", []string{"--result", "ok", "--resource", "gw-3"}, []string{"gw-3"}, []string{"gw-1", "vera"}},
			{"by time", []string{"--until", "1h"}, []string{"TIME"}, []string{"AddDevice"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				out, err := run(t, f, append([]string{"--token-file", auditor, "audit", "list"}, tt.args...)...)
				if err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				for _, w := range tt.want {
					if !strings.Contains(out, w) {
						t.Errorf("output lacks %q:\n%s", w, out)
					}
				}
				for _, w := range tt.notWant {
					if strings.Contains(out, w) {
						t.Errorf("output has %q:\n%s", w, out)
					}
				}
			})
		}
		if _, err := run(t, f, "--token-file", viewer, "audit", "list"); err == nil || !strings.Contains(err.Error(), "permission_denied") {
			t.Fatalf("a viewer read the audit trail: %v", err)
		}
		out, err := run(t, f, "--token-file", auditor, "audit", "list", "-o", "json", "--actor", "operator:dev-admin", "--action", "AddDevice", "--limit", "1")
		if err != nil || !strings.Contains(out, `"nextPageToken"`) || !strings.Contains(out, `"argsJson": "{\"device_id\":\"gw-3\"`) {
			t.Fatalf("one-entry page: %v\n%s", err, out)
		}
		if _, err := run(t, f, "--token-file", auditor, "audit", "list", "--page-token", "nonsense"); err == nil || !strings.Contains(err.Error(), "invalid_argument") {
			t.Fatalf("bad page token: %v", err)
		}
	})

	bundle := filepath.Join(dir, "audit.json")
	out, err := run(t, f, "--token-file", auditor, "audit", "export", "--since", "1h", "--out", bundle)
	if err != nil || !strings.Contains(out, ", 1 attestations") {
		t.Fatalf("%v\n%s", err, out)
	}
	pub := filepath.Join(dataDir, "audit", "signing.pub")
	out, err = run(t, f, "audit", "verify", bundle, "--key", pub)
	if err != nil || !strings.Contains(out, "OK") || !strings.Contains(out, "the key given") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "ferry_enroll_") {
		t.Fatal("an enrollment token reached the audit trail")
	}

	// The admin's four calls are on one chain.
	var b audit.Bundle
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	var admin *audit.Chain
	for i, ch := range b.Content.Chains {
		if len(ch.Entries) >= 4 {
			admin = &b.Content.Chains[i]
		}
	}
	if admin == nil {
		t.Fatalf("no chain with the admin's 4 entries in %+v", b.Content.Chains)
	}
	tamper := []struct {
		name string
		edit func(es []store.AuditEntry) []store.AuditEntry
		want string
	}{
		{"removed", func(es []store.AuditEntry) []store.AuditEntry { return append(es[:1:1], es[2:]...) }, "entries 2 to 2 are missing after entry 1"},
		{"reordered", func(es []store.AuditEntry) []store.AuditEntry { es[1], es[2] = es[2], es[1]; return es }, "entry 2 comes after entry 3: entries were reordered"},
		{"edited", func(es []store.AuditEntry) []store.AuditEntry { es[3].Resource = "gw-1"; return es }, "entry 4 was edited"},
	}
	for _, tt := range tamper {
		t.Run("tampered/"+tt.name, func(t *testing.T) {
			var c audit.Bundle
			if err := json.Unmarshal(raw, &c); err != nil {
				t.Fatal(err)
			}
			for i := range c.Content.Chains {
				if c.Content.Chains[i].Chain == admin.Chain {
					c.Content.Chains[i].Entries = tt.edit(c.Content.Chains[i].Entries)
				}
			}
			bad, err := json.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, tt.name+".json")
			if err := os.WriteFile(path, bad, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := run(t, f, "audit", "verify", path, "--key", pub)
			want := "chain " + itoa(admin.Chain) + ": " + tt.want
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("verify of a bundle with an entry %s: %v (%s), want %q", tt.name, err, out, want)
			}
		})
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestAuditExportWithKMSKey signs exports with a KMS key (a real sigstore
// KMS plugin process) and verifies them with its public key.
func TestAuditExportWithKMSKey(t *testing.T) {
	installKMSPlugin(t, "audit-1")
	f := ferrytest.Start(t, ferrytest.Embedded, func(c *server.Config) { c.Audit.SigningKMS = "ferrytest://audit-1" })
	if out, err := run(t, f, "device", "add", "gw-1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sv, err := kms.Get(context.Background(), "ferrytest://audit-1", crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	pubKey, err := sv.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	pemKey, err := cryptoutils.MarshalPublicKeyToPEM(pubKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pub, bundle := filepath.Join(dir, "audit.pub"), filepath.Join(dir, "audit.json")
	if err := os.WriteFile(pub, pemKey, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run(t, f, "audit", "export", "--since", "1h", "--out", bundle); err != nil || !strings.Contains(out, "1 entries") {
		t.Fatalf("export: %v\n%s", err, out)
	}
	if out, err := run(t, f, "audit", "verify", bundle, "--key", pub); err != nil || !strings.Contains(out, "OK") {
		t.Fatalf("verify with the KMS key: %v\n%s", err, out)
	}
	other := filepath.Join(f.Config().DataDir, "audit", "signing.pub")
	if _, err := os.Stat(other); err == nil {
		t.Fatalf("a file key was created beside the KMS key: %s", other)
	}
}
