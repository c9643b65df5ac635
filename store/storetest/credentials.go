package storetest

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/store"
)

// RunCredentials runs the conformance suite of store.Credentials against the
// stores newStore returns (fresh and empty for each subtest, on
// testclock.Now).
func RunCredentials(t *testing.T, newStore func(t *testing.T) store.Credentials) {
	tests := []struct {
		name string
		run  func(t *testing.T, s store.Credentials)
	}{
		{"EnrollmentOnce", testEnrollmentOnce},
		{"EnrollmentRefusals", testEnrollmentRefusals},
		{"EnrollmentRace", testEnrollmentRace},
		{"EnrollmentRetention", testEnrollmentRetention},
		{"EnrollmentSupersedes", testEnrollmentSupersedes},
		{"EnrollmentAfterEnrolled", testEnrollmentAfterEnrolled},
		{"EnrollmentDevicesApart", testEnrollmentDevicesApart},
		{"Revocations", testRevocations},
		{"TokenIDs", testTokenIDs},
		{"TokenIDKeptASecond", testTokenIDKeptASecond},
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
		if err := s.PutEnrollment(ctx, e, false); err != nil {
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
	if err := s.PutEnrollment(ctx, enrollment("bb", at.Add(time.Hour)), false); err != nil {
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
	if err := s.PutEnrollment(ctx, enrollment("dd", at.Add(time.Hour)), false); err != nil {
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

// testEnrollmentRetention checks that an enrollment is kept a day past its
// expiry by the store's wall clock (the test clock), and gone after.
func testEnrollmentRetention(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	now := testclock.Now()
	tests := []struct {
		name, hash string
		expires    time.Time
		want       error
	}{
		{"expired, kept", "r1", now.Add(-store.Retention + time.Hour), store.ErrExpired},
		{"past retention", "r2", now.Add(-store.Retention - time.Minute), store.ErrNotFound},
		{"long past retention", "r3", now.Add(-365 * 24 * time.Hour), store.ErrNotFound},
	}
	for _, tt := range tests {
		e := enrollment(tt.hash, tt.expires)
		e.DeviceID = "dev-" + tt.hash
		if err := s.PutEnrollment(ctx, e, false); err != nil {
			t.Fatalf("%s: PutEnrollment = %v", tt.name, err)
		}
		if _, err := s.TakeEnrollment(ctx, tt.hash, "c", now); !errors.Is(err, tt.want) {
			t.Errorf("%s: TakeEnrollment = %v, want %v", tt.name, err, tt.want)
		}
	}
	// The domain clock decides expiry, the store's clock retention: an
	// enrollment the store still keeps is good for a caller whose now is
	// before its expiry.
	if _, err := s.TakeEnrollment(ctx, "r1", "c", now.Add(-store.Retention)); err != nil {
		t.Errorf("TakeEnrollment of a kept enrollment before its expiry = %v", err)
	}
}

// testEnrollmentSupersedes checks that a device's newer enrollment voids
// its earlier ones, and that the device then enrolls only with the newest.
func testEnrollmentSupersedes(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	for _, h := range []string{"s1", "s2", "s3"} {
		if err := s.PutEnrollment(ctx, enrollment(h, at.Add(time.Hour)), false); err != nil {
			t.Fatalf("PutEnrollment(%s) = %v", h, err)
		}
	}
	// Repeating the put of an older hash does not make it current again.
	if err := s.PutEnrollment(ctx, enrollment("s1", at.Add(time.Hour)), false); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"s1", "s2"} {
		if _, err := s.TakeEnrollment(ctx, h, "c-"+h, at); !errors.Is(err, store.ErrSuperseded) {
			t.Errorf("TakeEnrollment(%s) after a newer one = %v, want ErrSuperseded", h, err)
		}
	}
	if _, err := s.TakeEnrollment(ctx, "s3", "c-3", at); err != nil {
		t.Fatalf("TakeEnrollment of the newest = %v", err)
	}
	if _, err := s.TakeEnrollment(ctx, "s3", "c-3", at); err != nil {
		t.Errorf("repeated TakeEnrollment by the same claimant = %v", err)
	}
	if _, err := s.TakeEnrollment(ctx, "s1", "c-1", at); !errors.Is(err, store.ErrSuperseded) {
		t.Errorf("TakeEnrollment of an old one after enrolling = %v, want ErrSuperseded", err)
	}
}

// testEnrollmentAfterEnrolled checks that a device that enrolled gets a new
// enrollment only as a re-enrolment, and that it voids the old ones.
func testEnrollmentAfterEnrolled(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	if err := s.PutEnrollment(ctx, enrollment("e1", at.Add(time.Hour)), false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TakeEnrollment(ctx, "e1", "c-1", at); err != nil {
		t.Fatal(err)
	}
	for range 2 { // refused, and refusing changes nothing
		if err := s.PutEnrollment(ctx, enrollment("e2", at.Add(time.Hour)), false); !errors.Is(err, store.ErrEnrolled) {
			t.Errorf("PutEnrollment for an enrolled device = %v, want ErrEnrolled", err)
		}
	}
	if _, err := s.TakeEnrollment(ctx, "e2", "c-2", at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("TakeEnrollment of a refused enrollment = %v, want ErrNotFound", err)
	}
	for range 2 { // a repeated re-enrolment is harmless
		if err := s.PutEnrollment(ctx, enrollment("e3", at.Add(time.Hour)), true); err != nil {
			t.Fatalf("PutEnrollment with reenroll = %v", err)
		}
	}
	if err := s.PutEnrollment(ctx, enrollment("e4", at.Add(time.Hour)), false); !errors.Is(err, store.ErrEnrolled) {
		t.Errorf("PutEnrollment without reenroll after a re-enrolment = %v, want ErrEnrolled", err)
	}
	if _, err := s.TakeEnrollment(ctx, "e1", "c-9", at); !errors.Is(err, store.ErrUsed) {
		t.Errorf("TakeEnrollment of the used one by another claimant = %v, want ErrUsed", err)
	}
	if _, err := s.TakeEnrollment(ctx, "e3", "c-3", at); err != nil {
		t.Errorf("TakeEnrollment of the re-enrolment = %v", err)
	}
}

// testEnrollmentDevicesApart checks that one device's enrollments do not
// touch another's.
func testEnrollmentDevicesApart(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	a, b := enrollment("a1", at.Add(time.Hour)), enrollment("b1", at.Add(time.Hour))
	b.DeviceID = "dev-2"
	for _, e := range []store.Enrollment{a, b} {
		if err := s.PutEnrollment(ctx, e, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range []string{"a1", "b1"} {
		if _, err := s.TakeEnrollment(ctx, h, "c-"+h, at); err != nil {
			t.Errorf("TakeEnrollment(%s) = %v", h, err)
		}
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
	exp := testclock.Now().Add(time.Minute)
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

// testTokenIDKeptASecond checks that a record is kept at least a second,
// even for a token that expired already, and then frees the id.
func testTokenIDKeptASecond(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	past := testclock.Now().Add(-time.Hour)
	if err := s.UseTokenID(ctx, "late", "a", past); err != nil {
		t.Fatal(err)
	}
	if err := s.UseTokenID(ctx, "late", "b", past); !errors.Is(err, store.ErrUsed) {
		t.Errorf("UseTokenID by another claimant at once = %v, want ErrUsed", err)
	}
	time.Sleep(1200 * time.Millisecond)
	if err := s.UseTokenID(ctx, "late", "b", past); err != nil {
		t.Errorf("UseTokenID after the record lapsed = %v, want success", err)
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
