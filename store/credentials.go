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
	// ErrSuperseded: a newer enrollment of the same device replaced this
	// one, or the device enrolled with another.
	ErrSuperseded = errors.New("superseded by a newer enrollment of the device")
	// ErrEnrolled: the device has enrolled already, and a new enrollment
	// was not asked for as a re-enrolment.
	ErrEnrolled = errors.New("the device has enrolled already")
)

// Retention is how long a store keeps an enrollment after its ExpiresAt.
const Retention = 24 * time.Hour

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
//
// A device has at most one enrollment that can still be taken: storing one
// supersedes the device's earlier ones, and once the device has taken one
// every other enrollment it had is void. A device that has enrolled gets a
// new enrollment only as an explicit re-enrolment.
//
// Two clocks are involved, and every backend uses them alike. Whether an
// enrollment has expired (ErrExpired) is decided by the now passed to
// TakeEnrollment: the caller's domain clock. How long it is kept is decided
// by the store's own wall clock (the host's time.Now unless the backend was
// given another): an enrollment more than Retention past its ExpiresAt is
// gone, and TakeEnrollment returns ErrNotFound for it.
type Enrollments interface {
	// PutEnrollment stores e under its token hash as its device's current
	// enrollment: the device's earlier enrollments that were not taken are
	// superseded. If the device has taken an enrollment before, it returns
	// ErrEnrolled and changes nothing unless reenroll is set. An
	// enrollment already past its retention is not stored. Repeating it is
	// harmless: a hash that is stored already is kept as it is.
	PutEnrollment(ctx context.Context, e Enrollment, reenroll bool) error
	// TakeEnrollment marks the enrollment used by claimant and returns it.
	// It returns ErrNotFound for an unknown hash (or one past retention),
	// ErrUsed when another claimant took it, ErrSuperseded when a newer
	// enrollment of the device replaced it or the device enrolled with
	// another, and ErrExpired at or after ExpiresAt. A repeat by the same
	// claimant succeeds again, so a retried call is harmless; claimant must
	// be unique per attempt.
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
	// until expires, and at least a second, by the store's wall clock. It
	// returns ErrUsed if another claimant used it while the record is
	// kept; a repeat by the same claimant succeeds.
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
