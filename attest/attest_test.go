package attest_test

import (
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/testclock"
)

var now = testclock.Start()

const sum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

type device struct {
	key   crypto.Signer
	chain [][]byte
}

func newDevice(t testing.TB, ca *credentials.CA, trustDomain, id string) device {
	t.Helper()
	key, err := credentials.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueDevice(trustDomain, id, key.Public(), time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	return device{key: key, chain: [][]byte{cert.Raw}}
}

func report(id string) attest.Report {
	return attest.Report{
		Device: id, JobID: "job-1", DesiredVersion: 3, Status: "SUCCEEDED", Time: now, Nonce: "n0nce",
		Bundle: &attest.Bundle{TargetPath: "gw/fw-2.bin", Length: 10, SHA256: sum},
	}
}

func TestSignVerify(t *testing.T) {
	ca, _ := credentials.NewCA("device CA", 24*time.Hour, now)
	other, _ := credentials.NewCA("other CA", 24*time.Hour, now)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	dev1 := newDevice(t, ca, "ferry.test", "dev-1")
	dev2 := newDevice(t, ca, "ferry.test", "dev-2")
	foreign := newDevice(t, other, "ferry.test", "dev-1")
	elsewhere := newDevice(t, ca, "other.test", "dev-1")

	sign := func(d device, st attest.Statement) []byte {
		env, err := attest.Sign(d.key, st)
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	good := sign(dev1, attest.NewStatement(report("dev-1")))
	configOnly := report("dev-1")
	configOnly.Bundle, configOnly.Config = nil, map[string]string{"log.level": "debug"}
	wrongSubject := attest.NewStatement(report("dev-1"))
	wrongSubject.Subject[0].Digest["sha256"] = strings.Repeat("0", 64)
	wrongType := attest.NewStatement(report("dev-1"))
	wrongType.PredicateType = "https://example.org/other"

	tampered := func(env []byte) []byte {
		var e map[string]any
		json.Unmarshal(env, &e)
		st := attest.NewStatement(report("dev-1"))
		st.Predicate.Status = "FAILED"
		raw, _ := json.Marshal(st)
		e["payload"] = base64.StdEncoding.EncodeToString(raw)
		out, _ := json.Marshal(e)
		return out
	}
	retyped := func(env []byte) []byte {
		var e map[string]any
		json.Unmarshal(env, &e)
		e["payloadType"] = "text/plain"
		out, _ := json.Marshal(e)
		return out
	}

	tests := []struct {
		name     string
		envelope []byte
		chain    [][]byte
		at       time.Time
		ok       bool
	}{
		{"valid", good, dev1.chain, now, true},
		{"valid, at the statement's time", good, dev1.chain, time.Time{}, true},
		{"configuration only", sign(dev1, attest.NewStatement(configOnly)), dev1.chain, now, true},
		{"signed by another device's key", sign(dev2, attest.NewStatement(report("dev-1"))), dev1.chain, now, false},
		{"another device's report and chain", sign(dev2, attest.NewStatement(report("dev-1"))), dev2.chain, now, false},
		{"certificate from another CA", sign(foreign, attest.NewStatement(report("dev-1"))), foreign.chain, now, false},
		{"another trust domain", sign(elsewhere, attest.NewStatement(report("dev-1"))), elsewhere.chain, now, false},
		{"expired certificate", good, dev1.chain, now.Add(2 * time.Hour), false},
		{"tampered payload", tampered(good), dev1.chain, now, false},
		{"other payload type", retyped(good), dev1.chain, now, false},
		{"subject is not what runs", sign(dev1, wrongSubject), dev1.chain, now, false},
		{"other predicate type", sign(dev1, wrongType), dev1.chain, now, false},
		{"no chain", good, nil, now, false},
		{"garbage chain", good, [][]byte{[]byte("x")}, now, false},
		{"garbage envelope", []byte("{"), dev1.chain, now, false},
		{"oversized envelope", append(good, make([]byte, attest.MaxEnvelopeBytes)...), dev1.chain, now, false},
	}
	for _, tt := range tests {
		st, chain, err := attest.Verify(tt.envelope, tt.chain, roots, "ferry.test", tt.at)
		if tt.ok != (err == nil) {
			t.Errorf("%s: Verify error = %v, want ok=%v", tt.name, err, tt.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, attest.ErrInvalid) {
				t.Errorf("%s: error %v is not ErrInvalid", tt.name, err)
			}
			continue
		}
		if st.Predicate.Device != "dev-1" || len(chain) != 2 {
			t.Errorf("%s: statement %+v, chain of %d", tt.name, st.Predicate, len(chain))
		}
	}
}

func TestConfigDigestIsOrderFree(t *testing.T) {
	a := attest.ConfigDigest(map[string]string{"a": "1", "b": "2"})
	b := attest.ConfigDigest(map[string]string{"b": "2", "a": "1"})
	c := attest.ConfigDigest(map[string]string{"a": "1b", "": "2"})
	if a != b || a == c {
		t.Errorf("digests %s %s %s", a, b, c)
	}
}

func FuzzVerifyEnvelope(f *testing.F) {
	ca, _ := credentials.NewCA("device CA", 24*time.Hour, now)
	dev := newDevice(f, ca, "ferry.test", "dev-1")
	good, _ := attest.Sign(dev.key, attest.NewStatement(report("dev-1")))
	f.Add(good)
	f.Add([]byte(`{"payloadType":"application/vnd.in-toto+json","payload":"e30=","signatures":[{"sig":"AA=="}]}`))
	cert, _ := x509.ParseCertificate(dev.chain[0])
	f.Fuzz(func(t *testing.T, envelope []byte) {
		st, err := attest.VerifyEnvelope(envelope, cert.PublicKey)
		if err != nil {
			return
		}
		// Whatever verifies must have been signed by the key: here, only
		// re-encodings of the one good envelope can.
		if st.Predicate.Device != "dev-1" || st.Predicate.JobID != "job-1" {
			t.Fatalf("verified a statement the key never signed: %+v", st.Predicate)
		}
	})
}

// BenchmarkVerifyByDevice is ferryd's cost per signed report before it
// writes anything: DSSE envelope, one ECDSA P-256 verification, statement.
func BenchmarkVerifyByDevice(b *testing.B) {
	ca, _ := credentials.NewCA("device CA", 24*time.Hour, now)
	dev := newDevice(b, ca, "ferry.test", "dev-1")
	env, _ := attest.Sign(dev.key, attest.NewStatement(report("dev-1")))
	leaf, _ := x509.ParseCertificate(dev.chain[0])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := attest.VerifyByDevice(env, leaf, "ferry.test"); err != nil {
			b.Fatal(err)
		}
	}
}
