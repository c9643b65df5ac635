package store

import (
	"context"
	"errors"
	"time"
)

// Errors of the credential stores.
var (
	// ErrUsed: a one-time value (enrollment token, single-use token id) was
	// already used by someone else.
	ErrUsed = errors.New("already used")
	// ErrExpired: the stored value exists but its time is over.
	ErrExpired = errors.New("expired")
)

// Enrollment is a pending one-time enrollment of a device. Only the SHA-256
// of the token is stored.
type Enrollment struct {
	TokenSHA256 string            `json:"token_sha256"`
	DeviceID    string            `json:"device_id"`
	Labels      map[string]string `json:"labels,omitempty"`
	CreatedAt   time.Time         `json:"created_at,omitzero"`
	ExpiresAt   time.Time         `json:"expires_at"`
}

// EnrollmentRetention is how long a store keeps an enrollment's record after
// it expires, so that a late try is told ErrExpired rather than ErrNotFound.
//
// Two clocks are at work. Whether an enrollment has expired is decided by the
// now given to TakeEnrollment (the caller's clock, which tests control). How
// long the record is kept is decided by the store's own wall clock: the Redis
// server's (the key's EXPIREAT), or the host's for the embedded store, which
// treats a record past its retention as gone in the same way. A record whose
// ExpiresAt plus the retention is already past by that wall clock is gone
// as soon as it is written.
const EnrollmentRetention = 24 * time.Hour

// Enrollments stores one-time enrollment tokens. Implementations are safe for
// concurrent use.
type Enrollments interface {
	// PutEnrollment stores e under its token hash. Repeating it is harmless.
	// The record is kept until EnrollmentRetention after e.ExpiresAt, by
	// the store's wall clock; after that it is ErrNotFound.
	PutEnrollment(ctx context.Context, e Enrollment) error
	// TakeEnrollment marks the enrollment used by claimant and returns it.
	// It returns ErrNotFound for an unknown hash, ErrExpired after
	// ExpiresAt, and ErrUsed when another claimant took it. A repeat by the
	// same claimant succeeds again, so a retried call is harmless; claimant
	// must be unique per attempt.
	TakeEnrollment(ctx context.Context, tokenSHA256, claimant string, now time.Time) (Enrollment, error)
}

// Revocation records that a device's certificates are no longer good.
type Revocation struct {
	DeviceID  string    `json:"device_id"`
	Reason    string    `json:"reason,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	RevokedBy string    `json:"revoked_by,omitempty"`
}

// Revocations stores revoked devices. Revocation is permanent.
type Revocations interface {
	// Revoke records r; revoking a revoked device keeps the first record
	// and returns it.
	Revoke(ctx context.Context, r Revocation) (Revocation, error)
	// GetRevocation returns the device's revocation, or ErrNotFound.
	GetRevocation(ctx context.Context, deviceID string) (Revocation, error)
	// ListRevocations returns every revocation.
	ListRevocations(ctx context.Context) ([]Revocation, error)
}

// TokenIDs records the ids of single-use tokens.
type TokenIDs interface {
	// UseTokenID records that id was used by claimant, keeping the record
	// until expires. It returns ErrUsed if another claimant used it first;
	// a repeat by the same claimant succeeds.
	UseTokenID(ctx context.Context, id, claimant string, expires time.Time) error
}

// Secrets holds small shared secrets, such as the key that signs download
// tokens, so that every ferryd instance on a store uses the same one.
type Secrets interface {
	// GetOrCreateSecret returns the secret stored under name, storing
	// candidate first if there is none. Every caller gets the same bytes.
	GetOrCreateSecret(ctx context.Context, name string, candidate []byte) ([]byte, error)
}

// Credentials is everything the credential broker persists.
type Credentials interface {
	Enrollments
	Revocations
	TokenIDs
	Secrets
}
