package credentials

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/testclock"
)

func TestOperatorCerts(t *testing.T) {
	now := testclock.Start()
	opCA, _ := NewCA("operators", 365*24*time.Hour, now)
	devCA, _ := NewCA("devices", 365*24*time.Hour, now)
	key, _ := NewKey()
	issue := func(ca *CA, name string, role Role, ttl time.Duration) *x509.Certificate {
		c, err := ca.IssueOperator(name, role, key.Public(), ttl, now)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	device, _ := devCA.IssueDevice("ferry.test", "dev-1", key.Public(), time.Hour, now)
	badRole, _ := opCA.IssueDevice("ferry.test", "dev-1", key.Public(), time.Hour, now) // no OU
	certs := NewOperatorCerts([]*x509.Certificate{opCA.Cert}, func() time.Time { return now })
	tests := []struct {
		name  string
		chain []*x509.Certificate
		want  Operator
		ok    bool
	}{
		{"viewer", []*x509.Certificate{issue(opCA, "ana", RoleViewer, time.Hour)}, Operator{"ana", RoleViewer}, true},
		{"admin", []*x509.Certificate{issue(opCA, "bo", RoleAdmin, time.Hour)}, Operator{"bo", RoleAdmin}, true},
		{"device certificate", []*x509.Certificate{device}, Operator{}, false},
		{"operator CA, no role", []*x509.Certificate{badRole}, Operator{}, false},
		{"other CA", []*x509.Certificate{issue(devCA, "eve", RoleAdmin, time.Hour)}, Operator{}, false},
		{"expired", []*x509.Certificate{issue(opCA, "old", RoleAdmin, -time.Minute)}, Operator{}, false},
		{"none", nil, Operator{}, false},
	}
	for _, tt := range tests {
		got, err := certs.Authenticate(tt.chain)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("%s: Authenticate = %+v, %v", tt.name, got, err)
		}
		if err != nil && !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: error %v is not ErrUnauthenticated", tt.name, err)
		}
	}
	if _, err := opCA.IssueOperator("x", "root", key.Public(), time.Hour, now); err == nil {
		t.Error("issued an operator certificate with an unknown role")
	}
}

func TestKeyPairReloader(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, _ := NewCA("ca", time.Hour, now)
	write := func(host string) *x509.Certificate {
		key, _ := NewKey()
		cert, err := ca.IssueServer([]string{host}, key.Public(), time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := writePair(filepath.Join(dir, "s.pem"), filepath.Join(dir, "s.key"), cert, key); err != nil {
			t.Fatal(err)
		}
		return cert
	}
	first := write("one.test")
	r, err := NewKeyPairReloader(filepath.Join(dir, "s.pem"), filepath.Join(dir, "s.key"), 0)
	if err != nil {
		t.Fatal(err)
	}
	serving := func() *x509.Certificate {
		c, err := r.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return c.Leaf
	}
	if !serving().Equal(first) {
		t.Fatal("not serving the first certificate")
	}
	second := write("two.test")
	// Make the change visible even on file systems with coarse times.
	later := now.Add(time.Minute)
	for _, p := range []string{"s.pem", "s.key"} {
		if err := os.Chtimes(filepath.Join(dir, p), later, later); err != nil {
			t.Fatal(err)
		}
	}
	if !serving().Equal(second) {
		t.Error("a replaced certificate was not picked up")
	}
	// A broken replacement keeps the last good pair in service.
	if err := os.WriteFile(filepath.Join(dir, "s.pem"), []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(dir, "s.pem"), later.Add(time.Minute), later.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if !serving().Equal(second) || r.LastError() == nil {
		t.Error("a broken replacement was not refused with the last good pair kept")
	}
}
