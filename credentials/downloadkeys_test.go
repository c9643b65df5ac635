package credentials

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
)

// testClock is a clock the test moves.
type testClock struct{ t atomic.Pointer[time.Time] }

func newTestClock() *testClock {
	c := &testClock{}
	c.set(time.Now())
	return c
}
func (c *testClock) now() time.Time          { return *c.t.Load() }
func (c *testClock) set(t time.Time)         { c.t.Store(&t) }
func (c *testClock) advance(d time.Duration) { c.set(c.now().Add(d)) }

// countingSecrets counts the reads of a real store's secrets.
type countingSecrets struct {
	store.Secrets
	reads atomic.Int64
}

func (c *countingSecrets) GetOrCreateSecret(ctx context.Context, name string, candidate []byte) ([]byte, error) {
	c.reads.Add(1)
	return c.Secrets.GetOrCreateSecret(ctx, name, candidate)
}

func openBolt(t *testing.T) *bolt.Store {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// instance is one ferryd's view of the shared keyset: its keyring and
// tokens.
type instance struct {
	ring   *Keyring
	tokens *Tokens
}

func newInstance(t *testing.T, secrets store.Secrets, clock *testClock, edit func(*KeyringConfig)) instance {
	t.Helper()
	cfg := KeyringConfig{Secrets: secrets, Now: clock.now}
	if edit != nil {
		edit(&cfg)
	}
	ring, err := NewKeyring(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := NewTokens(ring, clock.now)
	if err != nil {
		t.Fatal(err)
	}
	return instance{ring, tokens}
}

// issue signs a presigned grant good for ttl.
func (in instance) issue(t *testing.T, clock *testClock, ttl time.Duration) string {
	t.Helper()
	s, _, err := in.tokens.Issue(t.Context(), DownloadGrant{DeviceID: "dev-a", Target: "t.bin", Presigned: true, ExpiresAt: clock.now().Add(ttl)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// legacyToken is a token as ferryd signed them before key ids: testKey, no
// kid.
func legacyToken(t *testing.T, clock *testClock) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "dev-a", "target": "t.bin", "iss": tokenIssuer, "aud": tokenAudience, "exp": clock.now().Add(time.Hour).Unix(),
		"iat": clock.now().Unix(), "jti": "old", "psu": true,
	}).SignedString(testKey)
	if err != nil {
		t.Fatal(err)
	}
	if kidOf(t, s) != "" {
		t.Fatal("legacy token has a kid")
	}
	return s
}

func kidOf(t *testing.T, token string) string {
	t.Helper()
	tok, _, err := jwt.NewParser().ParseUnverified(token, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := tok.Header["kid"].(string)
	return kid
}

// TestKeyringAdoptsLegacySecret: the first keyset's key is the secret of
// the time before key ids, so tokens without a kid issued then still
// verify, and new tokens name the key.
func TestKeyringAdoptsLegacySecret(t *testing.T) {
	db := openBolt(t)
	clock := newTestClock()
	if _, err := db.GetOrCreateSecret(t.Context(), TokenKeyName, testKey); err != nil {
		t.Fatal(err)
	}
	a := newInstance(t, db, clock, nil)
	ks := a.ring.Keyset(t.Context())
	if string(ks.Current.Secret) != string(testKey) || !ks.Current.Legacy || len(ks.Previous) != 0 {
		t.Fatalf("first keyset %+v, want the legacy secret as its current key", ks.Public())
	}
	// A token as the ferryd of that time signed it: no kid.
	legacy := legacyToken(t, clock)
	if _, err := a.tokens.Verify(t.Context(), legacy); err != nil {
		t.Errorf("a token without kid from before the upgrade: %v", err)
	}
	if kid := kidOf(t, a.issue(t, clock, time.Minute)); kid != ks.Current.ID {
		t.Errorf("new token's kid %q, want %q", kid, ks.Current.ID)
	}
	// A second instance reads the same keyset.
	if b := newInstance(t, db, clock, nil); b.ring.Keyset(t.Context()).Current.ID != ks.Current.ID {
		t.Error("a second keyring on the store has another current key")
	}
}

// TestKeyRotation follows tokens across a rotation on two instances that
// share one store: the old key verifies everywhere until its grace ends,
// the new key is used for signing and is known to the other instance at
// once, and after the grace only the new key's tokens verify.
func TestKeyRotation(t *testing.T) {
	db := openBolt(t)
	clock := newTestClock()
	a, b := newInstance(t, db, clock, nil), newInstance(t, db, clock, nil)
	const grace = 10 * time.Minute
	// Tokens outlive the grace here, so that what refuses them later is
	// the key's retirement, not their expiry.
	old := a.issue(t, clock, time.Hour)
	oldShort := a.issue(t, clock, time.Minute)
	legacyKid := kidOf(t, old)

	ks, err := a.ring.Rotate(t.Context(), grace)
	if err != nil {
		t.Fatal(err)
	}
	if ks.Current.ID == legacyKid || len(ks.Previous) != 1 || ks.Previous[0].ID != legacyKid ||
		!ks.Previous[0].RetireAt.Equal(clock.now().Add(grace)) || !ks.Current.RetireAt.IsZero() {
		t.Fatalf("after rotation: %+v", ks.Public())
	}
	fresh := a.issue(t, clock, time.Hour)
	if kidOf(t, fresh) != ks.Current.ID {
		t.Fatalf("token after rotation names %q, want the new key %q", kidOf(t, fresh), ks.Current.ID)
	}
	verify := func(when string, in instance, name, token string, ok bool) {
		t.Helper()
		_, err := in.tokens.Verify(t.Context(), token)
		if ok && err != nil {
			t.Errorf("%s: %s refused: %v", when, name, err)
		}
		if !ok && !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s: %s = %v, want ErrUnauthenticated", when, name, err)
		}
	}
	for name, in := range map[string]instance{"A": a, "B": b} {
		verify("in grace on "+name, in, "old token", old, true)
		verify("in grace on "+name, in, "new token", fresh, true)
	}
	// B learnt the new key from the token that named it, and signs with it.
	if kid := kidOf(t, b.issue(t, clock, time.Hour)); kid != ks.Current.ID {
		t.Errorf("B signs with %q after verifying a new-key token, want %q", kid, ks.Current.ID)
	}

	// An old-key token that expires within the grace is refused then.
	clock.advance(2 * time.Minute)
	verify("old key, token expired", b, "short token", oldShort, false)

	clock.advance(grace)
	for name, in := range map[string]instance{"A": a, "B": b} {
		verify("after grace on "+name, in, "old token", old, false)
		verify("after grace on "+name, in, "new token", fresh, true)
	}
	if _, err := a.tokens.Verify(t.Context(), old); err == nil || !strings.Contains(err.Error(), "retired") {
		t.Errorf("old token after grace: %v, want it refused as retired", err)
	}
	// The next rotation drops the retired key.
	ks2, err := b.ring.Rotate(t.Context(), grace)
	if err != nil {
		t.Fatal(err)
	}
	if len(ks2.Previous) != 1 || ks2.Previous[0].ID != ks.Current.ID {
		t.Errorf("second rotation kept %+v, want only the key it replaced", ks2.Public().Previous)
	}
	verify("after the second rotation", a, "token of the first rotation's key", fresh, true)
}

// TestKeyRotationWithoutGrace: a rotation with no grace (the key leaked)
// refuses the old key's tokens at once, and tokens without kid with it.
func TestKeyRotationWithoutGrace(t *testing.T) {
	db := openBolt(t)
	clock := newTestClock()
	if _, err := db.GetOrCreateSecret(t.Context(), TokenKeyName, testKey); err != nil {
		t.Fatal(err)
	}
	a := newInstance(t, db, clock, nil)
	old := a.issue(t, clock, time.Hour)
	legacy := legacyToken(t, clock)
	if _, err := a.tokens.Verify(t.Context(), legacy); err != nil {
		t.Fatalf("token without kid before the rotation: %v", err)
	}
	if _, err := a.ring.Rotate(t.Context(), 0); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"old-key token": old, "token without kid": legacy} {
		if _, err := a.tokens.Verify(t.Context(), tok); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("%s after a rotation without grace: %v, want ErrUnauthenticated", name, err)
		}
	}
	if _, err := a.ring.Rotate(t.Context(), -time.Second); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative grace: %v, want ErrInvalid", err)
	}
}

// TestConcurrentRotations: rotations on many instances at once all apply,
// one after another; none is lost and every replaced key keeps its grace.
func TestConcurrentRotations(t *testing.T) {
	db := openBolt(t)
	clock := newTestClock()
	const n = 5
	rings := make([]instance, n)
	for i := range rings {
		rings[i] = newInstance(t, db, clock, nil)
	}
	first := rings[0].ring.Keyset(t.Context()).Current.ID
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range rings {
		wg.Go(func() { _, errs[i] = rings[i].ring.Rotate(t.Context(), time.Hour) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("rotation %d: %v", i, err)
		}
	}
	ks, err := rings[0].ring.Reload(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{ks.Current.ID: true}
	for _, k := range ks.Previous {
		ids[k.ID] = true
	}
	if len(ks.Previous) != n || len(ids) != n+1 || !ids[first] {
		t.Errorf("after %d concurrent rotations: current %s, previous %+v; want %d distinct previous keys including %s",
			n, ks.Current.ID, ks.Public().Previous, n, first)
	}
}

// TestKeyringRefresh: an instance picks up a rotation made elsewhere
// within Refresh even when no token names the new key, and tokens naming
// unknown keys do not make it read the store on every request.
func TestKeyringRefresh(t *testing.T) {
	db := openBolt(t)
	clock := newTestClock()
	counted := &countingSecrets{Secrets: db}
	a := newInstance(t, db, clock, nil)
	b := newInstance(t, counted, clock, func(c *KeyringConfig) { c.Refresh = 50 * time.Millisecond; c.MinUnknownReload = time.Hour })
	before := kidOf(t, b.issue(t, clock, time.Minute))
	ks, err := a.ring.Rotate(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for kidOf(t, b.issue(t, clock, time.Minute)) == before {
		if time.Now().After(deadline) {
			t.Fatal("B still signs with the replaced key 5s after the rotation")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := kidOf(t, b.issue(t, clock, time.Minute)); got != ks.Current.ID {
		t.Errorf("B signs with %q, want %q", got, ks.Current.ID)
	}

	// Forged kids: the first one reads the store, the rest wait for
	// MinUnknownReload (and the cache is fresh, so Refresh does not read).
	b = newInstance(t, counted, clock, func(c *KeyringConfig) { c.Refresh = time.Hour; c.MinUnknownReload = time.Hour })
	start := counted.reads.Load()
	for i := range 100 {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "d"})
		tok.Header["kid"] = fmt.Sprintf("forged-%d", i)
		s, _ := tok.SignedString(testKey)
		if _, err := b.tokens.Verify(t.Context(), s); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("forged kid: %v", err)
		}
	}
	if reads := counted.reads.Load() - start; reads != 1 {
		t.Errorf("100 tokens with unknown kids read the store %d times, want 1", reads)
	}
}

// TestKeyringBadStore: a keyset in the store that is not one is a clear
// error, not a panic or a silent new key.
func TestKeyringBadStore(t *testing.T) {
	for _, raw := range []string{"not json", `{"current":{"id":"x","secret":"c2hvcnQ="}}`, `{}`} {
		db := openBolt(t)
		if _, err := db.GetOrCreateSecret(t.Context(), DownloadKeysetName, []byte(raw)); err != nil {
			t.Fatal(err)
		}
		if _, err := NewKeyring(t.Context(), KeyringConfig{Secrets: db}); err == nil || !strings.Contains(err.Error(), "keyset") {
			t.Errorf("keyset %q: NewKeyring = %v, want a keyset error", raw, err)
		}
	}
}
