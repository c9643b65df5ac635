package credentials

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/ferryhq/ferry/store"
)

// BrokerConfig configures a Broker. Zero durations take the defaults shown.
type BrokerConfig struct {
	// TrustDomain of the device SPIFFE IDs.
	TrustDomain string
	// Issuer signs device certificates; nil means this ferryd cannot enroll
	// or renew (ErrNoIssuer).
	Issuer *CA
	// IssuerChain is sent after each issued leaf: the issuer's certificate
	// and any intermediates above it.
	IssuerChain []*x509.Certificate
	// CertTTL is the lifetime of device certificates (24 hours).
	CertTTL time.Duration
	// EnrollmentTTL is how long an enrollment token stays valid (7 days).
	EnrollmentTTL time.Duration
	// Manufacturers verifies factory certificates; nil disables enrollment
	// with a factory certificate.
	Manufacturers *x509.CertPool
	// Store persists enrollments and revocations.
	Store store.Credentials
	// Register adds a device enrolled with a factory certificate to the
	// fleet; it must be idempotent.
	Register func(ctx context.Context, id string, labels map[string]string) error
	// Revoked is the cached revocation set the broker adds to on Revoke.
	Revoked *RevocationSet
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Logger (slog.Default when nil).
	Logger *slog.Logger
}

// Broker issues and revokes device identities: one-time enrollment tokens,
// enrollment with a token or a factory certificate, renewal, and
// revocation. It is safe for concurrent use.
type Broker struct {
	cfg BrokerConfig
}

// NewBroker returns a broker with cfg's defaults filled in.
func NewBroker(cfg BrokerConfig) (*Broker, error) {
	if !ValidTrustDomain(cfg.TrustDomain) {
		return nil, fmt.Errorf("trust domain %q is malformed", cfg.TrustDomain)
	}
	if cfg.Store == nil {
		return nil, errors.New("broker: a store is required")
	}
	if cfg.CertTTL == 0 {
		cfg.CertTTL = 24 * time.Hour
	}
	if cfg.EnrollmentTTL == 0 {
		cfg.EnrollmentTTL = 7 * 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Revoked == nil {
		cfg.Revoked = NewRevocationSet(cfg.Store)
	}
	return &Broker{cfg: cfg}, nil
}

// Revocations returns the broker's cached revocation set.
func (b *Broker) Revocations() *RevocationSet { return b.cfg.Revoked }

// enrollmentPrefix marks enrollment tokens, so that secret scanners find
// them and they are never confused with API keys.
const enrollmentPrefix = "ferry_enroll_"

// ErrEnrolled: the device has enrolled already, so a new enrollment token is
// issued only as an explicit re-enrolment.
var ErrEnrolled = errors.New("the device has enrolled already")

// ErrEnrollmentToken is every refusal of an enrollment token: unknown, used,
// expired, or replaced by a newer token of the device. It does not say which
// (the log does).
var ErrEnrollmentToken = fmt.Errorf("%w: the enrollment token is unknown, used, expired or replaced by a newer one", ErrUnauthenticated)

// Issued is a certificate the broker issued.
type Issued struct {
	DeviceID string
	// Chain is the leaf followed by the issuer chain.
	Chain []*x509.Certificate
}

// Leaf returns the issued certificate.
func (i Issued) Leaf() *x509.Certificate { return i.Chain[0] }

// CreateEnrollment creates a one-time enrollment token for device id. The
// device itself must have been added to the fleet already; the labels are
// recorded with the enrollment. It returns the token (shown once, stored
// only as a hash) and when it expires. The new token replaces the device's
// earlier tokens that were not used: they stop working. A device that has
// enrolled gets ErrEnrolled unless reenroll is set (the operator's explicit
// re-enrolment); a revoked device gets ErrRevoked.
func (b *Broker) CreateEnrollment(ctx context.Context, id string, labels map[string]string, reenroll bool) (string, time.Time, error) {
	if !ValidDeviceID(id) {
		return "", time.Time{}, fmt.Errorf("%w: malformed device id %q", ErrInvalid, id)
	}
	if err := b.checkNotRevoked(ctx, id); err != nil {
		return "", time.Time{}, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", time.Time{}, err
	}
	token := enrollmentPrefix + base64.RawURLEncoding.EncodeToString(raw)
	now := b.cfg.Now()
	e := store.Enrollment{
		TokenSHA256: hashToken(token), DeviceID: id, Labels: maps.Clone(labels),
		CreatedAt: now, ExpiresAt: now.Add(b.cfg.EnrollmentTTL),
	}
	err := b.cfg.Store.PutEnrollment(ctx, e, reenroll)
	switch {
	case errors.Is(err, store.ErrEnrolled):
		return "", time.Time{}, fmt.Errorf("device %s: %w; re-enrol it to issue a new token, which voids its earlier ones", id, ErrEnrolled)
	case err != nil:
		return "", time.Time{}, fmt.Errorf("create enrollment for %s: %w", id, err)
	}
	return token, e.ExpiresAt, nil
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Enroll trades a CSR and a one-time enrollment token for a device
// certificate. Every failure of the token (unknown, used, expired, replaced
// by a newer token of the device or void because the device enrolled with
// another) is ErrEnrollmentToken, without saying which.
func (b *Broker) Enroll(ctx context.Context, csrDER []byte, token string) (Issued, error) {
	if b.cfg.Issuer == nil {
		return Issued{}, ErrNoIssuer
	}
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return Issued{}, err
	}
	if !strings.HasPrefix(token, enrollmentPrefix) || len(token) > 128 {
		return Issued{}, fmt.Errorf("%w: not an enrollment token", ErrUnauthenticated)
	}
	// Refuse before the one-time token is spent if no certificate could be
	// issued anyway: a refused request must leave the token usable.
	if !b.cfg.Issuer.Cert.NotAfter.After(b.cfg.Now()) {
		return Issued{}, fmt.Errorf("%w: the device CA expired at %v", ErrNoIssuer, b.cfg.Issuer.Cert.NotAfter)
	}
	claim := make([]byte, 16)
	if _, err := rand.Read(claim); err != nil {
		return Issued{}, err
	}
	e, err := b.cfg.Store.TakeEnrollment(ctx, hashToken(token), hex.EncodeToString(claim), b.cfg.Now())
	switch {
	case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrUsed), errors.Is(err, store.ErrExpired),
		errors.Is(err, store.ErrSuperseded):
		b.cfg.Logger.InfoContext(ctx, "enrollment refused", "reason", err)
		return Issued{}, ErrEnrollmentToken
	case err != nil:
		return Issued{}, fmt.Errorf("enroll: %w", err)
	}
	if err := b.checkNotRevoked(ctx, e.DeviceID); err != nil {
		return Issued{}, err
	}
	issued, err := b.issue(e.DeviceID, csr)
	if err == nil {
		b.cfg.Logger.InfoContext(ctx, "device enrolled", "device", e.DeviceID, "with", "token",
			"serial", issued.Leaf().SerialNumber.Text(16), "expires", issued.Leaf().NotAfter)
	}
	return issued, err
}

// EnrollFactory trades a CSR for a device certificate when the caller holds
// a factory certificate (chain: leaf first, then intermediates) from a
// configured manufacturer CA; the caller must have proved possession of
// the factory key (the TLS handshake does). The device id is the factory
// certificate's subject common name. The device is added to the fleet if it
// is new.
func (b *Broker) EnrollFactory(ctx context.Context, csrDER []byte, factory []*x509.Certificate) (Issued, error) {
	if b.cfg.Issuer == nil {
		return Issued{}, ErrNoIssuer
	}
	if b.cfg.Manufacturers == nil || len(factory) == 0 {
		return Issued{}, fmt.Errorf("%w: an enrollment token is required", ErrUnauthenticated)
	}
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return Issued{}, err
	}
	inter := x509.NewCertPool()
	for _, c := range factory[1:] {
		inter.AddCert(c)
	}
	_, err = factory[0].Verify(x509.VerifyOptions{
		Roots: b.cfg.Manufacturers, Intermediates: inter, CurrentTime: b.cfg.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return Issued{}, fmt.Errorf("%w: factory certificate: %v", ErrUnauthenticated, err)
	}
	id := factory[0].Subject.CommonName
	if !ValidDeviceID(id) {
		return Issued{}, fmt.Errorf("%w: factory certificate names malformed device id %q", ErrUnauthenticated, id)
	}
	if err := b.checkNotRevoked(ctx, id); err != nil {
		return Issued{}, err
	}
	if b.cfg.Register != nil {
		if err := b.cfg.Register(ctx, id, map[string]string{"enrollment": "factory"}); err != nil {
			return Issued{}, fmt.Errorf("register %s: %w", id, err)
		}
	}
	issued, err := b.issue(id, csr)
	if err == nil {
		b.cfg.Logger.InfoContext(ctx, "device enrolled", "device", id, "with", "factory certificate",
			"factory_issuer", factory[0].Issuer.CommonName, "serial", issued.Leaf().SerialNumber.Text(16))
	}
	return issued, err
}

// Renew issues a fresh certificate to device id, which has authenticated
// with a valid certificate. The revocation check reads the store, not the
// cache.
func (b *Broker) Renew(ctx context.Context, id string, csrDER []byte) (Issued, error) {
	if b.cfg.Issuer == nil {
		return Issued{}, ErrNoIssuer
	}
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return Issued{}, err
	}
	if err := b.checkNotRevoked(ctx, id); err != nil {
		return Issued{}, err
	}
	return b.issue(id, csr)
}

// CheckNotRevoked returns ErrRevoked if device id is revoked, reading the
// store rather than the cache.
func (b *Broker) CheckNotRevoked(ctx context.Context, id string) error {
	return b.checkNotRevoked(ctx, id)
}

// checkNotRevoked reads the device's revocation from the store.
func (b *Broker) checkNotRevoked(ctx context.Context, id string) error {
	r, err := b.cfg.Store.GetRevocation(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("revocation of %s: %w", id, err)
	}
	b.cfg.Revoked.add(r.DeviceID)
	return fmt.Errorf("device %s: %w", id, ErrRevoked)
}

func (b *Broker) issue(id string, csr *x509.CertificateRequest) (Issued, error) {
	now := b.cfg.Now()
	ttl := b.cfg.CertTTL
	if left := b.cfg.Issuer.Cert.NotAfter.Sub(now); left < ttl {
		ttl = left // never outlive the issuer
	}
	if ttl <= 0 {
		return Issued{}, fmt.Errorf("device CA expired at %v", b.cfg.Issuer.Cert.NotAfter)
	}
	cert, err := b.cfg.Issuer.IssueDevice(b.cfg.TrustDomain, id, csr.PublicKey, ttl, now)
	if err != nil {
		return Issued{}, err
	}
	return Issued{DeviceID: id, Chain: append([]*x509.Certificate{cert}, b.cfg.IssuerChain...)}, nil
}

// Revoke revokes device id for good: renewal and enrollment are refused at
// once, and the cached set that guards handshakes and downloads learns it
// at once on this instance (others within their refresh interval).
func (b *Broker) Revoke(ctx context.Context, id, reason, by string) (store.Revocation, error) {
	if !ValidDeviceID(id) {
		return store.Revocation{}, fmt.Errorf("%w: malformed device id %q", ErrInvalid, id)
	}
	if len(reason) > 1024 {
		return store.Revocation{}, fmt.Errorf("%w: reason is over 1024 bytes", ErrInvalid)
	}
	r, err := b.cfg.Store.Revoke(ctx, store.Revocation{DeviceID: id, Reason: reason, RevokedAt: b.cfg.Now(), RevokedBy: by})
	if err != nil {
		return store.Revocation{}, fmt.Errorf("revoke %s: %w", id, err)
	}
	b.cfg.Revoked.add(id)
	b.cfg.Logger.InfoContext(ctx, "device revoked", "device", id, "reason", reason, "by", by)
	return r, nil
}

// RevocationSet is a cached copy of the revoked devices, read on every TLS
// handshake and download. Refresh reloads it from the store. It is safe for
// concurrent use.
type RevocationSet struct {
	src store.Revocations
	mu  sync.RWMutex
	ids map[string]struct{}
}

// NewRevocationSet returns an empty set over src; call Refresh to load it.
func NewRevocationSet(src store.Revocations) *RevocationSet {
	return &RevocationSet{src: src, ids: map[string]struct{}{}}
}

// Revoked reports whether device id is in the cached set.
func (r *RevocationSet) Revoked(id string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	_, ok := r.ids[id]
	return ok
}

func (r *RevocationSet) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids[id] = struct{}{}
}

// Refresh reloads the set from the store and returns every revoked id.
func (r *RevocationSet) Refresh(ctx context.Context) ([]string, error) {
	list, err := r.src.ListRevocations(ctx)
	if err != nil {
		return nil, fmt.Errorf("refresh revocations: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Revocation is permanent: entries are only ever added.
	ids := make([]string, 0, len(list))
	for _, rv := range list {
		r.ids[rv.DeviceID] = struct{}{}
	}
	for id := range r.ids {
		ids = append(ids, id)
	}
	return ids, nil
}
