package credentials

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryhq/ferry/store"
)

// Download tokens are signed with the current key of a keyset that every
// ferryd on a store shares, and name it in their JWT header ("kid"). A
// rotation makes a new current key and keeps the old one as a previous key
// until its retire time (the rotation's grace), so that tokens in flight
// keep working on every instance while new ones carry the new key's id.
//
// The keyset is one JSON document in the store (store.Secrets, under
// DownloadKeysetName), replaced by compare-and-set, so a rotation is atomic
// and two rotations never lose one another.
//
// Tokens without a kid were signed before keys had ids, with the single
// shared secret stored under TokenKeyName. The first keyset adopts that
// secret as its first key (marked Legacy), so such tokens keep verifying
// while that key is current or in its grace; once it has retired, a token
// without a kid is refused.

const (
	// DownloadKeysetName is the name of the download token keyset in the
	// store.
	DownloadKeysetName = "download-token-keys"
	// downloadKeyBytes is the size of a new key's secret.
	downloadKeyBytes = 32
	// maxKeyIDBytes bounds the kid a token may name.
	maxKeyIDBytes = 64
)

// errKeyRetired: the token's key has passed its retire time.
var errKeyRetired = errors.New("the token's signing key was retired")

// DownloadKey is one key of the download token keyset.
type DownloadKey struct {
	// ID is the key's id, the "kid" of the tokens it signs.
	ID string `json:"id"`
	// Secret is the HMAC-SHA256 key.
	Secret    []byte    `json:"secret"`
	CreatedAt time.Time `json:"created_at"`
	// RetireAt is when a previous key stops verifying; zero for the
	// current key.
	RetireAt time.Time `json:"retire_at,omitzero"`
	// Legacy marks the key adopted from the single secret of the time
	// before keys had ids: tokens without a kid verify with it.
	Legacy bool `json:"legacy,omitempty"`
}

// NewDownloadKey returns a key over secret (at least 32 bytes) created at
// createdAt. Its id is derived from the secret: the same secret always has
// the same id, and the id tells nothing about the secret.
func NewDownloadKey(secret []byte, createdAt time.Time) (DownloadKey, error) {
	if len(secret) < 32 {
		return DownloadKey{}, errors.New("download token key must have at least 32 bytes")
	}
	sum := sha256.Sum256(append([]byte("ferry download token key id\x00"), secret...))
	return DownloadKey{ID: base64.RawURLEncoding.EncodeToString(sum[:9]), Secret: secret, CreatedAt: createdAt}, nil
}

// newRandomDownloadKey returns a fresh random key.
func newRandomDownloadKey(now time.Time) (DownloadKey, error) {
	secret := make([]byte, downloadKeyBytes)
	if _, err := rand.Read(secret); err != nil {
		return DownloadKey{}, err
	}
	return NewDownloadKey(secret, now)
}

// DownloadKeyset is the current key and the previous keys still in their
// grace period. It is a value: methods never change it.
type DownloadKeyset struct {
	Current  DownloadKey   `json:"current"`
	Previous []DownloadKey `json:"previous,omitempty"`
}

// SigningKey implements KeySource: the current key.
func (ks DownloadKeyset) SigningKey(context.Context) (DownloadKey, error) {
	if len(ks.Current.Secret) == 0 {
		return DownloadKey{}, errors.New("download token keyset has no current key")
	}
	return ks.Current, nil
}

// VerifyingKey implements KeySource: the key named kid (the legacy key for
// an empty kid), unless it retired before now.
func (ks DownloadKeyset) VerifyingKey(_ context.Context, kid string, now time.Time) (DownloadKey, error) {
	k, ok := ks.find(kid)
	if !ok {
		if kid == "" {
			return DownloadKey{}, errors.New("the token names no signing key (kid), and the key of the time before kids has retired")
		}
		return DownloadKey{}, fmt.Errorf("the token's signing key %q is unknown", kid)
	}
	if !k.RetireAt.IsZero() && !now.Before(k.RetireAt) {
		return DownloadKey{}, fmt.Errorf("%w: key %q at %s", errKeyRetired, k.ID, k.RetireAt.UTC().Format(time.RFC3339Nano))
	}
	return k, nil
}

// find returns the key named kid, or the legacy key for an empty kid.
func (ks DownloadKeyset) find(kid string) (DownloadKey, bool) {
	for _, k := range ks.keys() {
		if (kid == "" && k.Legacy) || (kid != "" && k.ID == kid) {
			return k, true
		}
	}
	return DownloadKey{}, false
}

func (ks DownloadKeyset) keys() []DownloadKey {
	return append([]DownloadKey{ks.Current}, ks.Previous...)
}

// rotated returns the keyset with next as the current key, the old current
// key retiring grace after now, and the previous keys that retired before
// now dropped.
func (ks DownloadKeyset) rotated(next DownloadKey, now time.Time, grace time.Duration) DownloadKeyset {
	old := ks.Current
	old.RetireAt = now.Add(grace)
	out := DownloadKeyset{Current: next, Previous: []DownloadKey{old}}
	for _, k := range ks.Previous {
		if now.Before(k.RetireAt) {
			out.Previous = append(out.Previous, k)
		}
	}
	return out
}

// Public returns the keyset without its secrets, to be shown.
func (ks DownloadKeyset) Public() DownloadKeyset {
	out := DownloadKeyset{Current: ks.Current, Previous: slices.Clone(ks.Previous)}
	out.Current.Secret = nil
	for i := range out.Previous {
		out.Previous[i].Secret = nil
	}
	return out
}

func parseKeyset(raw []byte) (DownloadKeyset, error) {
	var ks DownloadKeyset
	if err := json.Unmarshal(raw, &ks); err != nil {
		return DownloadKeyset{}, fmt.Errorf("download token keyset: %w", err)
	}
	for _, k := range ks.keys() {
		if k.ID == "" || len(k.Secret) < 32 {
			return DownloadKeyset{}, errors.New("download token keyset: a key lacks an id or a 32-byte secret")
		}
	}
	return ks, nil
}

// KeySource gives Tokens its keys. Implementations are safe for concurrent
// use.
type KeySource interface {
	// SigningKey returns the key new tokens are signed with.
	SigningKey(ctx context.Context) (DownloadKey, error)
	// VerifyingKey returns the key a token naming kid was signed with, if
	// it still verifies at now.
	VerifyingKey(ctx context.Context, kid string, now time.Time) (DownloadKey, error)
}

// KeyringConfig configures a Keyring. Zero durations take the defaults
// shown.
type KeyringConfig struct {
	// Secrets is the store the keyset is shared in.
	Secrets store.Secrets
	// Refresh is how old the cached keyset may get before it is read again
	// (5 seconds): how long a rotation made on another instance takes to
	// reach this one at most (a token naming an unknown key makes it read
	// at once).
	Refresh time.Duration
	// MinUnknownReload is the least time between two reads caused by
	// tokens naming unknown keys (1 second), so forged kids cannot make
	// every request read the store.
	MinUnknownReload time.Duration
	// Now is the clock of keys' creation and retire times (time.Now when
	// nil). The cache's age is measured with the process's monotonic clock.
	Now func() time.Time
	// Logger (slog.Default when nil).
	Logger *slog.Logger
}

// Keyring is the store's download token keyset, cached. It is safe for
// concurrent use.
type Keyring struct {
	cfg KeyringConfig
	// initial is the keyset stored if the store has none.
	initial []byte

	cached atomic.Pointer[keyringState]
	mu     sync.Mutex // one read of the store at a time
	// lastUnknown is when a token with an unknown kid last caused a read.
	lastUnknown time.Time
}

type keyringState struct {
	raw      []byte
	keys     DownloadKeyset
	loadedAt time.Time // monotonic, time.Now
}

// NewKeyring reads the keyset from cfg.Secrets, creating it the first time
// (adopting the secret of the time before key ids, see the package
// comment), and returns a keyring over it.
func NewKeyring(ctx context.Context, cfg KeyringConfig) (*Keyring, error) {
	if cfg.Secrets == nil {
		return nil, errors.New("keyring: a store is required")
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 5 * time.Second
	}
	if cfg.MinUnknownReload <= 0 {
		cfg.MinUnknownReload = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// The secret of the time before key ids becomes the first key; it is
	// created here if this store never had one, so that a ferryd of that
	// time on the same store signs with the same key during an upgrade.
	legacy, err := TokenKey(ctx, cfg.Secrets)
	if err != nil {
		return nil, err
	}
	first, err := NewDownloadKey(legacy, cfg.Now())
	if err != nil {
		return nil, fmt.Errorf("download token key: %w", err)
	}
	first.Legacy = true
	initial, err := json.Marshal(DownloadKeyset{Current: first})
	if err != nil {
		return nil, err
	}
	r := &Keyring{cfg: cfg, initial: initial}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.loadLocked(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// read returns the stored keyset, creating the first one if there is none.
func (r *Keyring) read(ctx context.Context) ([]byte, DownloadKeyset, error) {
	raw, err := r.cfg.Secrets.GetOrCreateSecret(ctx, DownloadKeysetName, r.initial)
	if err != nil {
		return nil, DownloadKeyset{}, fmt.Errorf("download token keyset: %w", err)
	}
	ks, err := parseKeyset(raw)
	return raw, ks, err
}

// loadLocked reads the keyset into the cache; r.mu is held.
func (r *Keyring) loadLocked(ctx context.Context) (*keyringState, error) {
	raw, ks, err := r.read(ctx)
	if err != nil {
		return nil, err
	}
	st := &keyringState{raw: raw, keys: ks, loadedAt: time.Now()}
	if old := r.cached.Load(); old != nil && old.keys.Current.ID != ks.Current.ID {
		r.cfg.Logger.InfoContext(ctx, "download token key changed", "current", ks.Current.ID, "previous", old.keys.Current.ID)
	}
	r.cached.Store(st)
	return st, nil
}

// fresh returns the cached keyset, reading it again first if it is older
// than Refresh. A failed read keeps the cached keyset (and logs).
func (r *Keyring) fresh(ctx context.Context) *keyringState {
	st := r.cached.Load()
	if time.Since(st.loadedAt) < r.cfg.Refresh || !r.mu.TryLock() {
		return st // fresh, or another caller is reading it right now
	}
	defer r.mu.Unlock()
	if st = r.cached.Load(); time.Since(st.loadedAt) < r.cfg.Refresh {
		return st
	}
	got, err := r.loadLocked(ctx)
	if err != nil {
		r.cfg.Logger.WarnContext(ctx, "download token keyset refresh failed; keeping the cached keyset", "err", err)
		return st
	}
	return got
}

// Keyset returns the keyset as this instance knows it.
func (r *Keyring) Keyset(ctx context.Context) DownloadKeyset {
	return r.fresh(ctx).keys
}

// Reload reads the keyset from the store now.
func (r *Keyring) Reload(ctx context.Context) (DownloadKeyset, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.loadLocked(ctx)
	if err != nil {
		return DownloadKeyset{}, err
	}
	return st.keys, nil
}

// SigningKey implements KeySource.
func (r *Keyring) SigningKey(ctx context.Context) (DownloadKey, error) {
	return r.fresh(ctx).keys.SigningKey(ctx)
}

// VerifyingKey implements KeySource. A kid this instance does not know
// makes it read the keyset again (at most once per MinUnknownReload), so a
// token signed on another instance after a rotation verifies here at once.
func (r *Keyring) VerifyingKey(ctx context.Context, kid string, now time.Time) (DownloadKey, error) {
	if len(kid) > maxKeyIDBytes {
		return DownloadKey{}, fmt.Errorf("the token's key id is over %d bytes", maxKeyIDBytes)
	}
	ks := r.fresh(ctx).keys
	if _, ok := ks.find(kid); !ok && kid != "" {
		ks = r.reloadForUnknown(ctx, kid)
	}
	return ks.VerifyingKey(ctx, kid, now)
}

func (r *Keyring) reloadForUnknown(ctx context.Context, kid string) DownloadKeyset {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.cached.Load()
	if _, ok := st.keys.find(kid); ok {
		return st.keys // another caller just read it
	}
	if !r.lastUnknown.IsZero() && time.Since(r.lastUnknown) < r.cfg.MinUnknownReload {
		return st.keys
	}
	r.lastUnknown = time.Now()
	got, err := r.loadLocked(ctx)
	if err != nil {
		r.cfg.Logger.WarnContext(ctx, "download token keyset read failed", "err", err)
		return st.keys
	}
	return got.keys
}

// Rotate makes a new random key the current one; the old current key keeps
// verifying for grace (zero retires it at once: for a key that leaked) and
// previous keys past their retire time are dropped. The store's keyset is
// replaced by compare-and-set: a rotation made at the same time elsewhere
// is kept, and this one applies on top of it. It returns the new keyset.
func (r *Keyring) Rotate(ctx context.Context, grace time.Duration) (DownloadKeyset, error) {
	if grace < 0 {
		return DownloadKeyset{}, fmt.Errorf("%w: negative grace period %v", ErrInvalid, grace)
	}
	next, err := newRandomDownloadKey(r.cfg.Now())
	if err != nil {
		return DownloadKeyset{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.loadLocked(ctx)
	for attempt := 0; err == nil; attempt++ {
		ks := st.keys.rotated(next, r.cfg.Now(), grace)
		raw, merr := json.Marshal(ks)
		if merr != nil {
			return DownloadKeyset{}, merr
		}
		err = r.cfg.Secrets.SwapSecret(ctx, DownloadKeysetName, st.raw, raw)
		if err == nil {
			r.cached.Store(&keyringState{raw: raw, keys: ks, loadedAt: time.Now()})
			r.cfg.Logger.InfoContext(ctx, "download token key rotated", "current", next.ID,
				"previous", st.keys.Current.ID, "previous_retires", ks.Previous[0].RetireAt)
			return ks, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= 10 {
			break
		}
		st, err = r.loadLocked(ctx) // another instance changed it: apply on top
	}
	return DownloadKeyset{}, fmt.Errorf("rotate download token key: %w", err)
}
