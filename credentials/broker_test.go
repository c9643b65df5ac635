package credentials

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
)

func newCSR(t testing.TB, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

type brokerFixture struct {
	broker  *Broker
	store   *bolt.Store
	ca      *CA
	factory *CA
	now     time.Time
}

func newBrokerFixture(t *testing.T) *brokerFixture {
	t.Helper()
	f := &brokerFixture{now: testclock.Start()}
	var err error
	if f.store, err = bolt.Open(filepath.Join(t.TempDir(), "ferry.db")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.store.Close() })
	f.store.SetClock(testclock.Now)
	if f.ca, err = NewCA("device CA", 365*24*time.Hour, f.now); err != nil {
		t.Fatal(err)
	}
	if f.factory, err = NewCA("factory CA", 365*24*time.Hour, f.now); err != nil {
		t.Fatal(err)
	}
	manufacturers := x509.NewCertPool()
	manufacturers.AddCert(f.factory.Cert)
	f.broker, err = NewBroker(BrokerConfig{
		TrustDomain: "ferry.test", Issuer: f.ca, IssuerChain: []*x509.Certificate{f.ca.Cert},
		Manufacturers: manufacturers, Store: f.store,
		Register: func(context.Context, string, map[string]string) error { return nil },
		Now:      func() time.Time { return f.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *brokerFixture) factoryCert(t *testing.T, id string) *x509.Certificate {
	t.Helper()
	key, _ := NewKey()
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: id}, NotBefore: f.now.Add(-time.Hour), NotAfter: f.now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	c, err := sign(tmpl, f.factory.Cert, key.Public(), f.factory.Key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestEnrollWithToken(t *testing.T) {
	ctx := context.Background()
	f := newBrokerFixture(t)
	token, exp, err := f.broker.CreateEnrollment(ctx, "gw-7", map[string]string{"model": "gw2"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := f.now.Add(7 * 24 * time.Hour); !exp.Equal(want) {
		t.Errorf("enrollment expires %v, want %v", exp, want)
	}
	key, _ := NewKey()
	issued, err := f.broker.Enroll(ctx, newCSR(t, key), token)
	if err != nil {
		t.Fatal(err)
	}
	leaf := issued.Leaf()
	if id, err := DeviceID("ferry.test", leaf); id != "gw-7" || err != nil {
		t.Errorf("issued certificate names %q, %v", id, err)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("issued certificate is not for the CSR's key")
	}
	if got := leaf.NotAfter.Sub(f.now); got != 24*time.Hour {
		t.Errorf("certificate lifetime %v, want 24h", got)
	}
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: f.now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("issued certificate does not verify: %v", err)
	}
	if _, err := f.broker.Enroll(ctx, newCSR(t, key), token); !errors.Is(err, ErrUnauthenticated) {
		t.Errorf("second use of the enrollment token = %v, want ErrUnauthenticated", err)
	}
}

func TestEnrollRefusals(t *testing.T) {
	ctx := context.Background()
	f := newBrokerFixture(t)
	key, _ := NewKey()
	good := newCSR(t, key)
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	tampered := newCSR(t, key)
	tampered[len(tampered)-5] ^= 0xff
	n := 0
	valid := func() string { // a device each: a new token voids a device's earlier ones
		n++
		tok, _, err := f.broker.CreateEnrollment(ctx, fmt.Sprintf("dev-ok-%d", n), nil, false)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	expired, _, _ := f.broker.CreateEnrollment(ctx, "dev-late", nil, false)
	revoked, _, _ := f.broker.CreateEnrollment(ctx, "dev-revoked", nil, false)
	if _, err := f.broker.Revoke(ctx, "dev-revoked", "lost", "test"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		csr   []byte
		token string
		later time.Duration
		want  error
	}{
		{"no CSR", nil, valid(), 0, ErrInvalid},
		{"garbage CSR", []byte{0x30, 0x03, 1, 2, 3}, valid(), 0, ErrInvalid},
		{"tampered CSR", tampered, valid(), 0, ErrInvalid},
		{"RSA 1024", newCSR(t, weak), valid(), 0, ErrInvalid},
		{"P-224", newCSR(t, p224), valid(), 0, ErrInvalid},
		{"no token", good, "", 0, ErrUnauthenticated},
		{"unknown token", good, enrollmentPrefix + "AAAA", 0, ErrUnauthenticated},
		{"API key as token", good, "ferry_xyz", 0, ErrUnauthenticated},
		{"expired token", good, expired, 8 * 24 * time.Hour, ErrUnauthenticated},
		{"revoked device", good, revoked, 0, ErrRevoked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			saved := f.now
			f.now = f.now.Add(tt.later)
			defer func() { f.now = saved }()
			if _, err := f.broker.Enroll(ctx, tt.csr, tt.token); !errors.Is(err, tt.want) {
				t.Errorf("Enroll = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestReaddingVoidsOldTokens: adding a device again voids its earlier
// tokens, a device that enrolled gets a new token only by re-enrolment, and
// no old token works after either.
func TestReaddingVoidsOldTokens(t *testing.T) {
	ctx := context.Background()
	f := newBrokerFixture(t)
	key, _ := NewKey()
	create := func(reenroll bool) string {
		t.Helper()
		tok, _, err := f.broker.CreateEnrollment(ctx, "gw-7", nil, reenroll)
		if err != nil {
			t.Fatalf("CreateEnrollment(reenroll %v) = %v", reenroll, err)
		}
		return tok
	}
	first, second, third := create(false), create(false), create(false)
	for _, old := range []string{first, second} {
		if _, err := f.broker.Enroll(ctx, newCSR(t, key), old); !errors.Is(err, ErrEnrollmentToken) {
			t.Errorf("Enroll with a replaced token = %v, want ErrEnrollmentToken", err)
		}
	}
	if _, err := f.broker.Enroll(ctx, newCSR(t, key), third); err != nil {
		t.Fatalf("Enroll with the newest token = %v", err)
	}
	if _, _, err := f.broker.CreateEnrollment(ctx, "gw-7", nil, false); !errors.Is(err, ErrEnrolled) {
		t.Errorf("CreateEnrollment for an enrolled device = %v, want ErrEnrolled", err)
	}
	again := create(true)
	for _, old := range []string{first, second, third} {
		if _, err := f.broker.Enroll(ctx, newCSR(t, key), old); !errors.Is(err, ErrEnrollmentToken) {
			t.Errorf("Enroll with an old token after re-enrolment = %v, want ErrEnrollmentToken", err)
		}
	}
	if _, err := f.broker.Enroll(ctx, newCSR(t, key), again); err != nil {
		t.Errorf("Enroll with the re-enrolment token = %v", err)
	}
}

func TestEnrollFactory(t *testing.T) {
	ctx := context.Background()
	f := newBrokerFixture(t)
	key, _ := NewKey()
	csr := newCSR(t, key)
	otherCA, _ := NewCA("other", time.Hour, f.now)
	otherKey, _ := NewKey()
	foreign, _ := otherCA.IssueDevice("ferry.test", "sn-1", otherKey.Public(), time.Hour, f.now)
	tests := []struct {
		name  string
		chain []*x509.Certificate
		want  string
		err   error
	}{
		{"factory certificate", []*x509.Certificate{f.factoryCert(t, "sn-1")}, "sn-1", nil},
		{"again (re-enrollment)", []*x509.Certificate{f.factoryCert(t, "sn-1")}, "sn-1", nil},
		{"other CA", []*x509.Certificate{foreign}, "", ErrUnauthenticated},
		{"malformed id", []*x509.Certificate{f.factoryCert(t, "a b")}, "", ErrUnauthenticated},
		{"none", nil, "", ErrUnauthenticated},
	}
	for _, tt := range tests {
		issued, err := f.broker.EnrollFactory(ctx, csr, tt.chain)
		if !errors.Is(err, tt.err) || (err == nil && issued.DeviceID != tt.want) {
			t.Errorf("%s: EnrollFactory = %q, %v; want %q, %v", tt.name, issued.DeviceID, err, tt.want, tt.err)
		}
	}
	if _, err := f.broker.Revoke(ctx, "sn-1", "", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.broker.EnrollFactory(ctx, csr, []*x509.Certificate{f.factoryCert(t, "sn-1")}); !errors.Is(err, ErrRevoked) {
		t.Errorf("factory enrollment of a revoked device = %v, want ErrRevoked", err)
	}
}

func TestRenewAndRevoke(t *testing.T) {
	ctx := context.Background()
	f := newBrokerFixture(t)
	key, _ := NewKey()
	if _, err := f.broker.Renew(ctx, "dev-1", newCSR(t, key)); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	// A second ferryd on the same store learns of the revocation on refresh.
	other := NewRevocationSet(f.store)
	if _, err := f.broker.Revoke(ctx, "dev-1", "stolen", "operator:a"); err != nil {
		t.Fatal(err)
	}
	if !f.broker.Revocations().Revoked("dev-1") {
		t.Error("the broker's own set does not know the revocation")
	}
	if other.Revoked("dev-1") {
		t.Error("the other set knew before a refresh")
	}
	if ids, err := other.Refresh(ctx); err != nil || len(ids) != 1 || !other.Revoked("dev-1") {
		t.Errorf("Refresh = %v, %v", ids, err)
	}
	if _, err := f.broker.Renew(ctx, "dev-1", newCSR(t, key)); !errors.Is(err, ErrRevoked) || !errors.Is(err, ErrForbidden) {
		t.Errorf("Renew of a revoked device = %v, want ErrRevoked", err)
	}
	if _, _, err := f.broker.CreateEnrollment(ctx, "dev-1", nil, false); !errors.Is(err, ErrRevoked) {
		t.Errorf("CreateEnrollment of a revoked device = %v, want ErrRevoked", err)
	}
	r, err := f.store.GetRevocation(ctx, "dev-1")
	if err != nil || r.Reason != "stolen" || r.RevokedBy != "operator:a" {
		t.Errorf("stored revocation %+v, %v", r, err)
	}
	if _, err := f.broker.Revoke(ctx, "bad id", "", ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("Revoke(bad id) = %v, want ErrInvalid", err)
	}
}

func TestCertificateNeverOutlivesIssuer(t *testing.T) {
	ctx := context.Background()
	f := newBrokerFixture(t)
	short, err := NewCA("short", 2*time.Hour, f.now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBroker(BrokerConfig{TrustDomain: "ferry.test", Issuer: short, Store: f.store, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	issued, err := b.Renew(ctx, "dev-1", newCSR(t, key))
	if err != nil {
		t.Fatal(err)
	}
	if issued.Leaf().NotAfter.After(short.Cert.NotAfter) {
		t.Errorf("certificate expires %v, after its issuer (%v)", issued.Leaf().NotAfter, short.Cert.NotAfter)
	}
	noIssuer, _ := NewBroker(BrokerConfig{TrustDomain: "ferry.test", Store: f.store})
	if _, err := noIssuer.Renew(ctx, "dev-1", newCSR(t, key)); !errors.Is(err, ErrNoIssuer) {
		t.Errorf("Renew without an issuer = %v, want ErrNoIssuer", err)
	}
}

// TestRefusedEnrollmentKeepsToken: an enrollment refused because no
// certificate can be issued (the device CA expired) leaves the one-time
// token usable once the server can issue again.
func TestRefusedEnrollmentKeepsToken(t *testing.T) {
	ctx := context.Background()
	f := newBrokerFixture(t)
	token, _, err := f.broker.CreateEnrollment(ctx, "gw-8", nil, false)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := NewKey()
	start := f.now
	f.now = f.ca.Cert.NotAfter.Add(time.Minute) // the CA has expired (the token too, later)
	if _, err := f.broker.Enroll(ctx, newCSR(t, key), token); !errors.Is(err, ErrNoIssuer) {
		t.Fatalf("Enroll with an expired CA = %v, want ErrNoIssuer", err)
	}
	f.now = start.Add(time.Hour) // a renewed CA, in effect
	if _, err := f.broker.Enroll(ctx, newCSR(t, key), token); err != nil {
		t.Errorf("the token did not survive the refused enrollment: %v", err)
	}
}

var _ store.Credentials = (*bolt.Store)(nil)

func FuzzParseCSR(f *testing.F) {
	// One CSR of each key type the parser meets (accepted and refused),
	// so that mutations start from every branch of the key checks. No RSA
	// key is generated here: every fuzzing worker runs this again.
	p256, _ := NewKey()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader) // refused curve
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	for _, key := range []any{p256, p384, p224, ed} {
		f.Add(newCSR(f, key))
	}
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ParseCSR(der)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		if csr.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not check")
		}
		if checkPublicKey(csr.PublicKey) != nil {
			t.Fatal("accepted a CSR with an unacceptable key")
		}
	})
}
