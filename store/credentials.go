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

// Enrollments stores one-time enrollment tokens. Implementations are safe for
// concurrent use.
type Enrollments interface {
	// PutEnrollment stores e under its token hash. Repeating it is harmless.
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
	// SwapSecret replaces the secret stored under name with next if it
	// still holds prev (compare-and-set). It returns ErrNotFound if there
	// is none and ErrConflict if it holds something else. If it already
	// holds next, it succeeds without a change, so a retried swap is
	// harmless.
	SwapSecret(ctx context.Context, name string, prev, next []byte) error
}

// Credentials is everything the credential broker persists.
type Credentials interface {
	Enrollments
	Revocations
	TokenIDs
	Secrets
}
