package storetest

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/store"
)

// RunCredentials runs the conformance suite of store.Credentials against the
// stores newStore returns (fresh and empty for each subtest).
func RunCredentials(t *testing.T, newStore func(t *testing.T) store.Credentials) {
	tests := []struct {
		name string
		run  func(t *testing.T, s store.Credentials)
	}{
		{"EnrollmentOnce", testEnrollmentOnce},
		{"EnrollmentRefusals", testEnrollmentRefusals},
		{"EnrollmentRace", testEnrollmentRace},
		{"Revocations", testRevocations},
		{"TokenIDs", testTokenIDs},
		{"Secrets", testSecrets},
		{"SecretSwap", testSecretSwap}, // keys.go
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.run(t, newStore(t))
		})
	}
}

func enrollment(hash string, expires time.Time) store.Enrollment {
	return store.Enrollment{
		TokenSHA256: hash, DeviceID: "dev-1", Labels: map[string]string{"model": "gw2"},
		CreatedAt: at, ExpiresAt: expires,
	}
}

func testEnrollmentOnce(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	e := enrollment("aa", at.Add(time.Hour))
	for range 2 { // repeating a put is harmless
		if err := s.PutEnrollment(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.TakeEnrollment(ctx, "aa", "claim-1", at)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(e, got, equalTime); diff != "" {
		t.Errorf("TakeEnrollment (-want +got):\n%s", diff)
	}
	if _, err := s.TakeEnrollment(ctx, "aa", "claim-1", at); err != nil {
		t.Errorf("repeated TakeEnrollment by the same claimant = %v, want success", err)
	}
	if _, err := s.TakeEnrollment(ctx, "aa", "claim-2", at); !errors.Is(err, store.ErrUsed) {
		t.Errorf("TakeEnrollment by another claimant = %v, want ErrUsed", err)
	}
}

func testEnrollmentRefusals(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	if err := s.PutEnrollment(ctx, enrollment("bb", at.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, hash string
		now        time.Time
		want       error
	}{
		{"unknown", "cc", at, store.ErrNotFound},
		{"at expiry", "bb", at.Add(time.Hour), store.ErrExpired},
		{"after expiry", "bb", at.Add(2 * time.Hour), store.ErrExpired},
	}
	for _, tt := range tests {
		if _, err := s.TakeEnrollment(ctx, tt.hash, "c", tt.now); !errors.Is(err, tt.want) {
			t.Errorf("%s: TakeEnrollment = %v, want %v", tt.name, err, tt.want)
		}
	}
	// An expired try does not use it up.
	if _, err := s.TakeEnrollment(ctx, "bb", "c", at); err != nil {
		t.Errorf("TakeEnrollment in time after a late try = %v", err)
	}
}

func testEnrollmentRace(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	if err := s.PutEnrollment(ctx, enrollment("dd", at.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins int
	)
	for i := range 16 {
		wg.Go(func() {
			_, err := s.TakeEnrollment(ctx, "dd", string(rune('a'+i)), at)
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			} else if !errors.Is(err, store.ErrUsed) {
				t.Errorf("TakeEnrollment: %v", err)
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("%d claimants took one enrollment, want 1", wins)
	}
}

func testRevocations(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	if _, err := s.GetRevocation(ctx, "dev-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetRevocation before Revoke = %v, want ErrNotFound", err)
	}
	if got, err := s.ListRevocations(ctx); err != nil || len(got) != 0 {
		t.Errorf("ListRevocations on an empty store = %v, %v", got, err)
	}
	first := store.Revocation{DeviceID: "dev-1", Reason: "stolen", RevokedAt: at, RevokedBy: "operator:a"}
	got, err := s.Revoke(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first, got, equalTime); diff != "" {
		t.Errorf("Revoke (-want +got):\n%s", diff)
	}
	again := first
	again.Reason, again.RevokedAt = "again", at.Add(time.Hour)
	if got, err := s.Revoke(ctx, again); err != nil || !got.RevokedAt.Equal(at) || got.Reason != "stolen" {
		t.Errorf("second Revoke = %+v, %v; want the first record kept", got, err)
	}
	if _, err := s.Revoke(ctx, store.Revocation{DeviceID: "dev-2", RevokedAt: at}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetRevocation(ctx, "dev-1"); err != nil || got.Reason != "stolen" {
		t.Errorf("GetRevocation = %+v, %v", got, err)
	}
	list, err := s.ListRevocations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, r := range list {
		ids[r.DeviceID] = true
	}
	if len(list) != 2 || !ids["dev-1"] || !ids["dev-2"] {
		t.Errorf("ListRevocations = %+v, want dev-1 and dev-2", list)
	}
}

func testTokenIDs(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	exp := time.Now().Add(time.Minute)
	steps := []struct {
		id, claimant string
		want         error
	}{
		{"t1", "a", nil},
		{"t1", "a", nil}, // a retry of the same use
		{"t1", "b", store.ErrUsed},
		{"t2", "b", nil},
	}
	for _, st := range steps {
		if err := s.UseTokenID(ctx, st.id, st.claimant, exp); !errors.Is(err, st.want) {
			t.Errorf("UseTokenID(%s, %s) = %v, want %v", st.id, st.claimant, err, st.want)
		}
	}
}

func testSecrets(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	first, err := s.GetOrCreateSecret(ctx, "k", []byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.GetOrCreateSecret(ctx, "k", []byte("two"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, []byte("one")) || !bytes.Equal(second, []byte("one")) {
		t.Errorf("GetOrCreateSecret = %q then %q, want \"one\" both times", first, second)
	}
	other, err := s.GetOrCreateSecret(ctx, "other", []byte("three"))
	if err != nil || !bytes.Equal(other, []byte("three")) {
		t.Errorf("GetOrCreateSecret(other) = %q, %v", other, err)
	}
}
