package credentials

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/store/bolt"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// testKeys is a fixed keyset of one key, testKey.
func testKeys(t testing.TB, secret []byte) DownloadKeyset {
	t.Helper()
	k, err := NewDownloadKey(secret, testclock.Start().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return DownloadKeyset{Current: k}
}

// mint signs claims with method and testKey, naming its key id.
func mint(t testing.TB, method jwt.SigningMethod, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	tok.Header["kid"] = testKeys(t, testKey).Current.ID
	s, err := tok.SignedString(testKey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testCerts(t testing.TB) (a, b *x509.Certificate) {
	t.Helper()
	now := testclock.Now()
	ca, err := NewCA("t", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	ka, _ := NewKey()
	kb, _ := NewKey()
	a, _ = ca.IssueDevice("ferry.test", "dev-a", ka.Public(), time.Hour, now)
	b, _ = ca.IssueDevice("ferry.test", "dev-b", kb.Public(), time.Hour, now)
	return a, b
}

func TestTokenRoundTrip(t *testing.T) {
	now := testclock.Start().Local() // tokens decode times in the local zone
	tok, err := NewTokens(testKeys(t, testKey), func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	certA, _ := testCerts(t)
	in := DownloadGrant{
		DeviceID: "dev-a", Target: "fw/gw2-1.2.0.bin", SHA256: "ab12", Length: 42,
		CertThumbprint: Thumbprint(certA), SingleUse: true, ExpiresAt: now.Add(5 * time.Minute),
	}
	s, issued, err := tok.Issue(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	if issued.ID == "" || !issued.IssuedAt.Equal(now) {
		t.Errorf("issued grant %+v lacks id or issue time", issued)
	}
	got, err := tok.Verify(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	if got != issued {
		t.Errorf("Verify = %+v, want %+v", got, issued)
	}
	if _, _, err := tok.Issue(t.Context(), DownloadGrant{DeviceID: "d", Target: "t", ExpiresAt: now}); err == nil {
		t.Error("issued a grant neither bound nor presigned")
	}
	if _, err := NewDownloadKey([]byte("short"), now); err == nil {
		t.Error("accepted a 5-byte key")
	}
}

func TestTokenVerifyRefusals(t *testing.T) {
	now := testclock.Start().Local() // tokens decode times in the local zone
	tok, _ := NewTokens(testKeys(t, testKey), func() time.Time { return now })
	other, _ := NewTokens(testKeys(t, []byte("another key, also thirty-two bytes!")), func() time.Time { return now })
	certA, _ := testCerts(t)
	g := DownloadGrant{DeviceID: "dev-a", Target: "t.bin", CertThumbprint: Thumbprint(certA), ExpiresAt: now.Add(time.Minute)}
	good, _, _ := tok.Issue(t.Context(), g)
	foreign, _, _ := other.Issue(t.Context(), g)
	expiredGrant := g
	expiredGrant.IssuedAt, expiredGrant.ExpiresAt = now.Add(-time.Hour), now.Add(-time.Minute)
	expired, _, _ := tok.Issue(t.Context(), expiredGrant)
	parts := strings.Split(good, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tamperedPayload := strings.Replace(string(payload), `"t.bin"`, `"x.bin"`, 1)
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(tamperedPayload)) + "." + parts[2]
	none := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	// A token signed with the same key but another algorithm family is
	// refused by the algorithm list, not by luck.
	hs512 := mint(t, jwt.SigningMethodHS512, jwt.MapClaims{"sub": "dev-a", "target": "t.bin", "iss": tokenIssuer, "aud": tokenAudience, "exp": now.Add(time.Minute).Unix(), "iat": now.Unix(), "jti": "x", "psu": true})
	noIat := mint(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "dev-a", "target": "t.bin", "iss": tokenIssuer, "aud": tokenAudience, "exp": now.Add(time.Minute).Unix(), "jti": "x", "psu": true})
	wrongAud := mint(t, jwt.SigningMethodHS256, jwt.MapClaims{"sub": "dev-a", "target": "t.bin", "iss": tokenIssuer, "aud": "other", "exp": now.Add(time.Minute).Unix(), "iat": now.Unix(), "jti": "x", "psu": true})
	// The same claims, correctly signed, but without a kid, or naming
	// a key that does not exist or as a number: refused, with no legacy
	// key in this keyset.
	claims := jwt.MapClaims{"sub": "dev-a", "target": "t.bin", "iss": tokenIssuer, "aud": tokenAudience, "exp": now.Add(time.Minute).Unix(), "iat": now.Unix(), "jti": "x", "psu": true}
	withKid := func(kid any) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
		if kid == nil {
			delete(tok.Header, "kid")
		} else {
			tok.Header["kid"] = kid
		}
		s, _ := tok.SignedString(testKey)
		return s
	}
	if _, err := tok.Verify(t.Context(), mint(t, jwt.SigningMethodHS256, claims)); err != nil {
		t.Fatalf("the correctly minted control token is refused: %v", err)
	}
	tests := []struct{ name, token string }{
		{"empty", ""},
		{"garbage", "a.b.c"},
		{"other key", foreign},
		{"expired", expired},
		{"tampered payload", tampered},
		{"alg none", none},
		{"HS512", hs512},
		{"no issue time", noIat},
		{"other audience", wrongAud},
		{"no kid", withKid(nil)},
		{"unknown kid", withKid("nope")},
		{"numeric kid", withKid(7)},
		{"empty kid", withKid("")},
		{"huge kid", withKid(strings.Repeat("k", 100))},
		{"huge", strings.Repeat("a", MaxTokenBytes+1)},
	}
	for _, tt := range tests {
		if _, err := tok.Verify(t.Context(), tt.token); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: Verify = %v, want ErrUnauthenticated", tt.name, err)
		}
	}
}

func TestDownloadsAuthorize(t *testing.T) {
	ctx := context.Background()
	now := testclock.Now()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tok, _ := NewTokens(testKeys(t, testKey), nil)
	revoked := NewRevocationSet(db)
	d := &Downloads{Tokens: tok, Revoked: revoked, Used: db}
	certA, certB := testCerts(t)
	issue := func(g DownloadGrant) string {
		if g.ExpiresAt.IsZero() {
			g.ExpiresAt = now.Add(time.Minute)
		}
		s, _, err := tok.Issue(t.Context(), g)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	bound := DownloadGrant{DeviceID: "dev-a", Target: "t.bin", SHA256: "aa", CertThumbprint: Thumbprint(certA)}
	once := bound
	once.SingleUse = true
	onceToken := issue(once)
	presigned := DownloadGrant{DeviceID: "dev-a", Target: "t.bin", Presigned: true}
	revokedGrant := DownloadGrant{DeviceID: "dev-r", Target: "t.bin", Presigned: true}
	revoked.add("dev-r")
	tests := []struct {
		name  string
		token string
		req   DownloadRequest
		want  error
	}{
		{"bound, right certificate", issue(bound), DownloadRequest{Target: "t.bin", SHA256: "aa", ClientCert: certA}, nil},
		{"bound, resume (same token again)", issue(bound), DownloadRequest{Target: "t.bin", ClientCert: certA}, nil},
		{"bound, other certificate", issue(bound), DownloadRequest{Target: "t.bin", ClientCert: certB}, ErrForbidden},
		{"bound, no certificate", issue(bound), DownloadRequest{Target: "t.bin"}, ErrForbidden},
		{"other target", issue(bound), DownloadRequest{Target: "u.bin", ClientCert: certA}, ErrForbidden},
		{"other digest", issue(bound), DownloadRequest{Target: "t.bin", SHA256: "bb", ClientCert: certA}, ErrForbidden},
		{"single use, first", onceToken, DownloadRequest{Target: "t.bin", ClientCert: certA, Claimant: "r1"}, nil},
		{"single use, retry of the same request", onceToken, DownloadRequest{Target: "t.bin", ClientCert: certA, Claimant: "r1"}, nil},
		{"single use, replay", onceToken, DownloadRequest{Target: "t.bin", ClientCert: certA, Claimant: "r2"}, ErrForbidden},
		{"presigned, no certificate", issue(presigned), DownloadRequest{Target: "t.bin"}, nil},
		{"presigned, other target", issue(presigned), DownloadRequest{Target: "u.bin"}, ErrForbidden},
		{"revoked device", issue(revokedGrant), DownloadRequest{Target: "t.bin"}, ErrRevoked},
		{"bad token", "x", DownloadRequest{Target: "t.bin", ClientCert: certA}, ErrUnauthenticated},
	}
	for _, tt := range tests {
		_, err := d.Authorize(ctx, tt.token, tt.req)
		if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
			t.Errorf("%s: Authorize = %v, want %v", tt.name, err, tt.want)
		}
	}
}

func FuzzVerifyToken(f *testing.F) {
	now := testclock.Start().Local() // tokens decode times in the local zone
	tok, _ := NewTokens(testKeys(f, testKey), func() time.Time { return now })
	good, _, _ := tok.Issue(f.Context(), DownloadGrant{DeviceID: "d", Target: "t", Presigned: true, ExpiresAt: now.Add(time.Minute)})
	f.Add(good)
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		g, err := tok.Verify(t.Context(), s)
		if err != nil {
			if !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("error %v is not ErrUnauthenticated", err)
			}
			return
		}
		// Whatever verifies must be exactly what this key signed: issuing
		// the grant again gives a token that verifies to the same grant.
		again, _, err := tok.Issue(t.Context(), g)
		if err != nil {
			t.Fatalf("verified grant %+v cannot be issued: %v", g, err)
		}
		if g2, err := tok.Verify(t.Context(), again); err != nil || g2 != g {
			t.Fatalf("round trip of %+v gives %+v, %v", g, g2, err)
		}
	})
}

func BenchmarkDownloadToken(b *testing.B) {
	tok, _ := NewTokens(testKeys(b, testKey), nil)
	certA, _ := testCerts(b)
	g := DownloadGrant{
		DeviceID: "gw-000123", Target: "bundles/gw2/firmware-1.2.0.tar", Length: 52428800,
		SHA256:         "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		CertThumbprint: Thumbprint(certA), ExpiresAt: time.Now().Add(5 * time.Minute),
	}
	b.Run("issue", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := tok.Issue(b.Context(), g); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
	})
	s, _, _ := tok.Issue(b.Context(), g)
	b.Run("verify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := tok.Verify(b.Context(), s); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
	})
	d := &Downloads{Tokens: tok, Revoked: NewRevocationSet(nil)}
	req := DownloadRequest{Target: g.Target, SHA256: g.SHA256, ClientCert: certA}
	b.Run("authorize", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := d.Authorize(context.Background(), s, req); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tokens/s")
	})
}

// TestTokenTimes: a token is good until its expiry and not a second
// longer; its issue time may be a little ahead of the verifier's clock
// (issued by another instance), by at most IssuedAtSkew.
func TestTokenTimes(t *testing.T) {
	start := testclock.Start().Local()
	now := start
	tok, _ := NewTokens(testKeys(t, testKey), func() time.Time { return now })
	certA, _ := testCerts(t)
	issueAt := func(at time.Time) (string, DownloadGrant) {
		t.Helper()
		s, g, err := tok.Issue(t.Context(), DownloadGrant{
			DeviceID: "dev-a", Target: "t.bin", CertThumbprint: Thumbprint(certA), IssuedAt: at, ExpiresAt: at.Add(time.Minute),
		})
		if err != nil {
			t.Fatal(err)
		}
		return s, g
	}
	token, g := issueAt(start)
	ahead, _ := issueAt(start.Add(IssuedAtSkew - time.Second))
	tooFarAhead, _ := issueAt(start.Add(IssuedAtSkew + 2*time.Second))
	for _, tt := range []struct {
		name  string
		token string
		at    time.Time
		ok    bool
	}{
		{"at issue", token, start, true},
		{"a second before expiry", token, g.ExpiresAt.Add(-time.Second), true},
		{"at expiry", token, g.ExpiresAt, false},
		{"a second after expiry", token, g.ExpiresAt.Add(time.Second), false},
		{"issued a little ahead of this clock", ahead, start, true},
		{"issued too far ahead of this clock", tooFarAhead, start, false},
	} {
		now = tt.at
		_, err := tok.Verify(t.Context(), tt.token)
		if tt.ok && err != nil || !tt.ok && !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: Verify = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

// TestSingleUseTokenNotReplayedAfterExpiry: the single-use record is kept
// until the token's expiry; a replay just after it must still be refused
// (by the expiry, as the record may be gone).
func TestSingleUseTokenNotReplayedAfterExpiry(t *testing.T) {
	ctx := t.Context()
	now := testclock.Start()
	clock := func() time.Time { return now }
	db, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetClock(clock)
	tok, _ := NewTokens(testKeys(t, testKey), clock)
	d := &Downloads{Tokens: tok, Used: db}
	certA, _ := testCerts(t)
	s, g, err := tok.Issue(ctx, DownloadGrant{DeviceID: "dev-a", Target: "t.bin", CertThumbprint: Thumbprint(certA), SingleUse: true, ExpiresAt: now.Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	now = g.ExpiresAt.Add(-500 * time.Millisecond)
	if _, err := d.Authorize(ctx, s, DownloadRequest{Target: "t.bin", ClientCert: certA, Claimant: "r1"}); err != nil {
		t.Fatalf("first use just before expiry: %v", err)
	}
	now = g.ExpiresAt.Add(2 * time.Second)
	if _, err := d.Authorize(ctx, s, DownloadRequest{Target: "t.bin", ClientCert: certA, Claimant: "r2"}); err == nil {
		t.Error("a single-use token was accepted again after its expiry")
	}
}
