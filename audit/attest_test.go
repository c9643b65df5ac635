package audit_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/audit"
	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
)

// TestExportCarriesAttestations checks that the signed reports of jobs
// that ended in the span go into the bundle and are checked, and that
// those outside it stay out.
func TestExportCarriesAttestations(t *testing.T) {
	ctx := context.Background()
	s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	start := testclock.Start()

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gw-1"},
		NotBefore: start.Add(-time.Hour), NotAfter: start.Add(48 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: "gw-1", CreatedAt: start}); err != nil {
		t.Fatal(err)
	}
	for i, job := range []string{"job-old", "job-in"} {
		at := start.Add(time.Duration(i*10) * time.Hour) // hour 0 and hour 10
		env, err := attest.Sign(key, attest.NewStatement(attest.Report{Device: "gw-1", JobID: job, DesiredVersion: uint64(i + 1), Status: "SUCCEEDED", Time: at, Nonce: "n"}))
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.SetReported(ctx, "gw-1", uint64(i), store.Reported{Version: uint64(i + 1), Signed: true, ReportedAt: at},
			store.Write{Event: store.Event{Time: at, Kind: "job_ended", JobID: job, Status: "SUCCEEDED"},
				Attestation: &store.Attestation{JobID: job, Envelope: env, CertificateChain: [][]byte{der}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	clock := start.Add(10 * time.Hour)
	rec := audit.NewRecorder(s, func() time.Time { return clock }, nil)
	rec.Record(ctx, store.AuditEntry{Actor: "operator:alice", Action: "/x/SetDesiredState", Result: "ok"})

	signer, pub := newSigner(t)
	raw, err := audit.Export(ctx, audit.Sources{Audit: s, Devices: s}, signer, start.Add(5*time.Hour), start.Add(20*time.Hour), clock)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(raw, pub)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Attestations != 1 || rep.Entries != 1 {
		t.Fatalf("report %+v, want 1 attestation (job-in) and 1 entry", rep)
	}
	var b audit.Bundle
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	if got := b.Content.Attestations[0].JobID; got != "job-in" {
		t.Fatalf("attestation of %s, want job-in", got)
	}
	// A forged attestation is refused, and named.
	b.Content.Attestations[0].Envelope = []byte(strings.Replace(string(b.Content.Attestations[0].Envelope), `"sig":"`, `"sig":"AA`, 1))
	bad, _ := json.Marshal(b)
	if _, err := audit.Verify(bad, pub); !errors.Is(err, audit.ErrInvalid) || !strings.Contains(err.Error(), "job-in") {
		t.Fatalf("forged attestation: %v", err)
	}
}
