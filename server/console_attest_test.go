package server

import (
	"crypto"
	"crypto/tls"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/store"
)

// TestAttestationResponse checks ferryd's verdict on stored reports: a
// good one verifies, with its statement and chain decoded; each way a
// stored report can be wrong gets verified false and the reason, and the
// statement is still shown when it decodes.
func TestAttestationResponse(t *testing.T) {
	pki := func(name string) (credentials.DevFiles, *tls.Certificate) {
		dev, err := credentials.EnsureDev(filepath.Join(t.TempDir(), name), credentials.DevOptions{TrustDomain: "ferry.test", Devices: []string{"dev-1"}, CertTTL: 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		certPath, keyPath := dev.DeviceCert("dev-1")
		cert, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			t.Fatal(err)
		}
		return dev, &cert
	}
	dev, cert := pki("ours")
	_, otherCert := pki("other")
	cas, err := credentials.ReadCertFile(dev.CACert)
	if err != nil {
		t.Fatal(err)
	}
	roots := certPool(cas)
	sign := func(c *tls.Certificate, device, job string) []byte {
		env, err := attest.Sign(c.PrivateKey.(crypto.Signer), attest.NewStatement(attest.Report{
			Device: device, JobID: job, DesiredVersion: 3, Status: "SUCCEEDED", Time: time.Now().UTC(), Nonce: "n-1",
			Bundle: &attest.Bundle{TargetPath: "gw/fw-2.bin", Length: 10, SHA256: strings.Repeat("ab", 32)},
		}))
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	good := sign(cert, "dev-1", "job-1")
	tampered := []byte(strings.Replace(string(good), `"sig":"`, `"sig":"AAAA`, 1))

	for _, tc := range []struct {
		name      string
		a         store.Attestation
		verified  bool
		reason    string // in the verification error
		statement bool   // the statement JSON is shown
		certs     int
	}{
		{name: "verified", a: store.Attestation{Envelope: good, CertificateChain: cert.Certificate}, verified: true, statement: true, certs: 1},
		{name: "another CA's device", a: store.Attestation{Envelope: sign(otherCert, "dev-1", "job-1"), CertificateChain: otherCert.Certificate},
			reason: "certificate chain", statement: true, certs: 1},
		{name: "signed by another key", a: store.Attestation{Envelope: sign(otherCert, "dev-1", "job-1"), CertificateChain: cert.Certificate},
			reason: "signature", statement: true, certs: 1},
		{name: "about another job", a: store.Attestation{Envelope: sign(cert, "dev-1", "job-2"), CertificateChain: cert.Certificate},
			reason: `job "job-2", not "job-1"`, statement: true, certs: 1},
		{name: "tampered signature", a: store.Attestation{Envelope: tampered, CertificateChain: cert.Certificate},
			reason: "signature", statement: true, certs: 1},
		{name: "no chain", a: store.Attestation{Envelope: good}, reason: "no certificate chain", statement: true},
		{name: "not an envelope", a: store.Attestation{Envelope: []byte("{}"), CertificateChain: cert.Certificate}, reason: "signature", certs: 1},
		{name: "bad certificate", a: store.Attestation{Envelope: good, CertificateChain: [][]byte{[]byte("junk")}}, reason: "certificate 0", statement: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := attestationResponse(tc.a, roots, "ferry.test", "dev-1", "job-1")
			if got.GetVerified() != tc.verified {
				t.Errorf("verified = %v (%q), want %v", got.GetVerified(), got.GetVerificationError(), tc.verified)
			}
			if tc.verified && got.GetVerificationError() != "" {
				t.Errorf("verified with an error %q", got.GetVerificationError())
			}
			if !strings.Contains(got.GetVerificationError(), tc.reason) {
				t.Errorf("verification error %q, want it to say %q", got.GetVerificationError(), tc.reason)
			}
			if s := got.GetStatementJson(); tc.statement {
				var st attest.Statement
				if err := json.Unmarshal([]byte(s), &st); err != nil || st.Predicate.Device != "dev-1" || st.Subject[0].Name != "gw/fw-2.bin" {
					t.Errorf("statement %q: %+v, %v", s, st, err)
				}
			} else if s != "" {
				t.Errorf("statement %q, want none", s)
			}
			if len(got.GetCertificates()) != tc.certs {
				t.Fatalf("%d certificates decoded, want %d", len(got.GetCertificates()), tc.certs)
			}
			if tc.certs > 0 {
				c := got.GetCertificates()[0]
				if !strings.Contains(strings.Join(c.GetUris(), " "), "spiffe://ferry.test/device/dev-1") ||
					c.GetIssuer() == "" || len(c.GetSha256Fingerprint()) != 64 || !c.GetNotAfter().AsTime().After(c.GetNotBefore().AsTime()) {
					t.Errorf("leaf certificate %v", c)
				}
			}
			if string(got.GetEnvelope()) != string(tc.a.Envelope) {
				t.Error("envelope not returned as stored")
			}
		})
	}
}
