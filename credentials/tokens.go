package credentials

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ferryhq/ferry/store"
)

// Download tokens are JWTs (RFC 7519) signed with HMAC-SHA256 under a key
// every ferryd instance shares (kept in the store, see downloadkeys.go);
// the header's "kid" names the key. Only ferryd issues and verifies them,
// so a symmetric key costs nothing in trust and makes issue and verify
// cost microseconds, where an ECDSA P-256 verify costs about 60.

const (
	tokenIssuer   = "ferryd"
	tokenAudience = "ferry-download"
	// IssuedAtSkew is how far in the future a token's issue time may be
	// when it is verified: another ferryd instance issued it, and clocks
	// differ a little (the times in a token are whole seconds, too). Expiry
	// has no such leeway.
	IssuedAtSkew = 5 * time.Second
	// MaxTokenBytes bounds the tokens Verify looks at.
	MaxTokenBytes = 4 << 10
	// TokenKeyName is the name in the store of the single signing key of
	// the time before key ids; the first keyset adopts it.
	TokenKeyName = "download-token-hs256"
)

// DownloadGrant is what a download token allows: one device, one target,
// until it expires.
type DownloadGrant struct {
	// ID is the token's unique id (jti).
	ID string
	// DeviceID is the device the token was issued to (sub).
	DeviceID string
	// Target is the TUF target path; SHA256 (hex) and Length describe it.
	Target string
	SHA256 string
	Length uint64
	// CertThumbprint is the RFC 8705 cnf.x5t#S256 binding: the base64url
	// SHA-256 of the device certificate's DER. Empty for a pre-signed URL.
	CertThumbprint string
	// Presigned marks a pre-signed URL token, which is not bound to a
	// certificate and may travel in a URL.
	Presigned bool
	// SingleUse tokens are good for one request.
	SingleUse bool
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// downloadClaims is the JWT form of a DownloadGrant.
type downloadClaims struct {
	jwt.RegisteredClaims
	Target    string        `json:"target"`
	SHA256    string        `json:"sha256,omitempty"`
	Length    uint64        `json:"len,omitempty"`
	Cnf       *confirmation `json:"cnf,omitempty"`
	Presigned bool          `json:"psu,omitempty"`
	SingleUse bool          `json:"once,omitempty"`
}

type confirmation struct {
	X5tS256 string `json:"x5t#S256"`
}

// Thumbprint returns a certificate's RFC 8705 x5t#S256 thumbprint.
func Thumbprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// Tokens issues and verifies download tokens. It is safe for concurrent
// use.
type Tokens struct {
	keys   KeySource
	now    func() time.Time
	parser *jwt.Parser
}

// NewTokens returns a token issuer and verifier over keys (a Keyring, or a
// fixed DownloadKeyset). now is the clock (time.Now when nil).
func NewTokens(keys KeySource, now func() time.Time) (*Tokens, error) {
	if keys == nil {
		return nil, errors.New("download tokens need keys")
	}
	if now == nil {
		now = time.Now
	}
	return &Tokens{
		keys: keys,
		now:  now,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
			jwt.WithIssuer(tokenIssuer),
			jwt.WithAudience(tokenAudience),
			jwt.WithExpirationRequired(),
			jwt.WithTimeFunc(now),
			// No leeway: a token is refused from the second after its
			// expiry, so that a single-use record (kept until the expiry)
			// outlives every use it must stop. The issue time is checked in
			// Verify, with IssuedAtSkew.
		),
	}, nil
}

// TokenKey returns the single download token key of the time before key
// ids from secrets, creating a random one the first time.
func TokenKey(ctx context.Context, secrets store.Secrets) ([]byte, error) {
	candidate := make([]byte, 32)
	if _, err := rand.Read(candidate); err != nil {
		return nil, err
	}
	key, err := secrets.GetOrCreateSecret(ctx, TokenKeyName, candidate)
	if err != nil {
		return nil, fmt.Errorf("download token key: %w", err)
	}
	return key, nil
}

// Issue signs g with the current key, named in the token's "kid". It fills
// in ID and IssuedAt when they are empty; g must name a device, a target
// and an expiry, and be either bound to a certificate or presigned.
func (t *Tokens) Issue(ctx context.Context, g DownloadGrant) (string, DownloadGrant, error) {
	if g.DeviceID == "" || g.Target == "" || g.ExpiresAt.IsZero() {
		return "", g, errors.New("download grant needs a device, a target and an expiry")
	}
	if (g.CertThumbprint == "") != g.Presigned {
		return "", g, errors.New("download grant must be bound to a certificate or presigned, not both")
	}
	if g.ID == "" {
		id := make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return "", g, err
		}
		g.ID = hex.EncodeToString(id)
	}
	if g.IssuedAt.IsZero() {
		g.IssuedAt = t.now()
	}
	c := downloadClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: tokenIssuer, Subject: g.DeviceID, Audience: jwt.ClaimStrings{tokenAudience},
			ExpiresAt: jwt.NewNumericDate(g.ExpiresAt), IssuedAt: jwt.NewNumericDate(g.IssuedAt), ID: g.ID,
		},
		Target: g.Target, SHA256: g.SHA256, Length: g.Length,
		Presigned: g.Presigned, SingleUse: g.SingleUse,
	}
	if g.CertThumbprint != "" {
		c.Cnf = &confirmation{X5tS256: g.CertThumbprint}
	}
	key, err := t.keys.SigningKey(ctx)
	if err != nil {
		return "", g, fmt.Errorf("sign download token: %w", err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	tok.Header["kid"] = key.ID
	s, err := tok.SignedString(key.Secret)
	if err != nil {
		return "", g, fmt.Errorf("sign download token: %w", err)
	}
	// JWT times have second precision; return what the token says.
	g.IssuedAt, g.ExpiresAt = c.IssuedAt.Time, c.ExpiresAt.Time
	return s, g, nil
}

// Verify checks a token's signature (with the key its "kid" names, which
// must not have retired), algorithm, issuer, audience and expiry, and
// returns its grant. Any failure is ErrUnauthenticated.
func (t *Tokens) Verify(ctx context.Context, token string) (DownloadGrant, error) {
	if len(token) > MaxTokenBytes {
		return DownloadGrant{}, fmt.Errorf("%w: download token is over %d bytes", ErrUnauthenticated, MaxTokenBytes)
	}
	var c downloadClaims
	_, err := t.parser.ParseWithClaims(token, &c, func(tok *jwt.Token) (any, error) {
		kid := ""
		if v, ok := tok.Header["kid"]; ok {
			s, isString := v.(string)
			if !isString || s == "" {
				return nil, errors.New("the token's kid is not a key id")
			}
			kid = s
		}
		key, err := t.keys.VerifyingKey(ctx, kid, t.now())
		if err != nil {
			return nil, err
		}
		return key.Secret, nil
	})
	if err != nil {
		return DownloadGrant{}, fmt.Errorf("%w: download token: %v", ErrUnauthenticated, err)
	}
	if c.Subject == "" || c.Target == "" || c.ID == "" || c.IssuedAt == nil {
		return DownloadGrant{}, fmt.Errorf("%w: download token lacks a device, target, id or issue time", ErrUnauthenticated)
	}
	if c.IssuedAt.After(t.now().Add(IssuedAtSkew)) {
		return DownloadGrant{}, fmt.Errorf("%w: download token: issued in the future (more than %v ahead of this server's clock)", ErrUnauthenticated, IssuedAtSkew)
	}
	g := DownloadGrant{
		ID: c.ID, DeviceID: c.Subject, Target: c.Target, SHA256: c.SHA256, Length: c.Length,
		Presigned: c.Presigned, SingleUse: c.SingleUse,
		IssuedAt: c.IssuedAt.Time, ExpiresAt: c.ExpiresAt.Time,
	}
	if c.Cnf != nil {
		g.CertThumbprint = c.Cnf.X5tS256
	}
	if (g.CertThumbprint == "") != g.Presigned {
		return DownloadGrant{}, fmt.Errorf("%w: download token is neither bound nor presigned", ErrUnauthenticated)
	}
	return g, nil
}

// DownloadRequest is a download as the download handler sees it.
type DownloadRequest struct {
	// Target is the TUF target path requested.
	Target string
	// SHA256 is the target's digest (hex) if the handler knows it.
	SHA256 string
	// ClientCert is the TLS client certificate the request came over, if
	// any; its key possession was proved by the handshake.
	ClientCert *x509.Certificate
	// Claimant identifies this request, for the single-use record; a
	// retried store write with the same claimant is harmless.
	Claimant string
}

// Downloads authorizes downloads with tokens: signature and expiry
// (Tokens.Verify), target and digest, the certificate binding, the
// device's revocation, and single use. It is safe for concurrent use.
type Downloads struct {
	Tokens  *Tokens
	Revoked *RevocationSet
	Used    store.TokenIDs
}

// Authorize checks token for req and returns its grant. A bad token is
// ErrUnauthenticated; a good token used out of its scope (another target,
// another certificate, a revoked device, a second use) is ErrForbidden.
func (d *Downloads) Authorize(ctx context.Context, token string, req DownloadRequest) (DownloadGrant, error) {
	g, err := d.Tokens.Verify(ctx, token)
	if err != nil {
		return DownloadGrant{}, err
	}
	if g.Target != req.Target {
		return g, fmt.Errorf("%w: the token is for another target", ErrForbidden)
	}
	if req.SHA256 != "" && g.SHA256 != "" && subtle.ConstantTimeCompare([]byte(req.SHA256), []byte(g.SHA256)) != 1 {
		return g, fmt.Errorf("%w: the token is for another version of the target", ErrForbidden)
	}
	if !g.Presigned {
		if req.ClientCert == nil {
			return g, fmt.Errorf("%w: the token is bound to a certificate; present it over TLS", ErrForbidden)
		}
		if subtle.ConstantTimeCompare([]byte(Thumbprint(req.ClientCert)), []byte(g.CertThumbprint)) != 1 {
			return g, fmt.Errorf("%w: the token is bound to another certificate", ErrForbidden)
		}
	}
	if d.Revoked != nil && d.Revoked.Revoked(g.DeviceID) {
		return g, fmt.Errorf("device %s: %w", g.DeviceID, ErrRevoked)
	}
	if g.SingleUse {
		err := d.Used.UseTokenID(ctx, g.ID, req.Claimant, g.ExpiresAt)
		if errors.Is(err, store.ErrUsed) {
			return g, fmt.Errorf("%w: the single-use token was already used", ErrForbidden)
		}
		if err != nil {
			return g, fmt.Errorf("single-use token: %w", err)
		}
	}
	return g, nil
}
