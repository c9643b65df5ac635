package credentials

import (
	"crypto/x509"
	"os"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/testclock"
)

func TestEnsureDev(t *testing.T) {
	dir := t.TempDir()
	now := testclock.Start()
	opts := DevOptions{
		TrustDomain: "ferry.test",
		Hosts:       []string{"localhost", "127.0.0.1"},
		Devices:     []string{"dev-1", "dev-2"},
		CertTTL:     7 * 24 * time.Hour,
		Now:         func() time.Time { return now },
	}
	f, err := EnsureDev(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := ReadCertFile(f.CACert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca[0])
	for _, id := range opts.Devices {
		certPath, keyPath := f.DeviceCert(id)
		certs, err := ReadCertFile(certPath)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ReadKeyFile(keyPath); err != nil {
			t.Fatal(err)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("device %s certificate does not verify: %v", id, err)
		}
		if got, err := DeviceID("ferry.test", certs[0]); got != id || err != nil {
			t.Errorf("device %s certificate names %q, %v", id, got, err)
		}
	}
	server, err := ReadCertFile(f.ServerCert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := server[0].Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, DNSName: "localhost"}); err != nil {
		t.Errorf("server certificate does not verify for localhost: %v", err)
	}
	keys, err := LoadOperatorKeys(f.Operators)
	if err != nil {
		t.Fatal(err)
	}
	token, err := os.ReadFile(f.OperatorToken)
	if err != nil {
		t.Fatal(err)
	}
	if op, err := keys.Authenticate(string(token[:len(token)-1])); err != nil || op.Role != RoleAdmin {
		t.Errorf("development operator token: %+v, %v", op, err)
	}

	// A restart keeps everything that is still valid.
	before, _ := os.ReadFile(f.ServerCert)
	beforeToken := string(token)
	if _, err := EnsureDev(dir, opts); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(f.ServerCert)
	afterToken, _ := os.ReadFile(f.OperatorToken)
	if string(before) != string(after) || beforeToken != string(afterToken) {
		t.Error("a second EnsureDev replaced valid credentials")
	}

	// A week later the certificates are issued anew from the same CA.
	now = now.Add(7 * 24 * time.Hour)
	if _, err := EnsureDev(dir, opts); err != nil {
		t.Fatal(err)
	}
	renewed, err := ReadCertFile(f.ServerCert)
	if err != nil {
		t.Fatal(err)
	}
	if !renewed[0].NotAfter.After(now) {
		t.Error("expired server certificate was not issued anew")
	}
	if _, err := renewed[0].Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, DNSName: "localhost"}); err != nil {
		t.Errorf("renewed server certificate does not verify with the original CA: %v", err)
	}
}
