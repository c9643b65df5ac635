package redis_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
	"github.com/ferryhq/ferry/store/storetest"
)

func TestConformance(t *testing.T) {
	url := testredis.URL(t)
	storetest.Run(t, func(t *testing.T) store.Devices {
		s, err := redis.Open(context.Background(), url, testredis.Prefix(t))
		if err != nil {
			t.Fatal(err)
		}
		s.SetClock(testclock.Now)
		return s
	})
}

func TestCredentialsConformance(t *testing.T) {
	url := testredis.URL(t)
	storetest.RunCredentials(t, func(t *testing.T) store.Credentials {
		s, err := redis.Open(context.Background(), url, testredis.Prefix(t))
		if err != nil {
			t.Fatal(err)
		}
		s.SetClock(testclock.Now)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestRolloutsConformance(t *testing.T) {
	url := testredis.URL(t)
	storetest.RunRollouts(t, func(t *testing.T) storetest.RolloutStore {
		s, err := redis.Open(context.Background(), url, testredis.Prefix(t))
		if err != nil {
			t.Fatal(err)
		}
		s.SetClock(testclock.Now)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestRolloutKeys checks where rollout keys live: the rollout's own keys
// and the lease in {rollouts}, each execution in its device's bucket (with
// that bucket's fence), and that leases expire by Redis's TTL.
func TestRolloutKeys(t *testing.T) {
	ctx := context.Background()
	url := testredis.URL(t)
	prefix := testredis.Prefix(t)
	s, err := redis.Open(ctx, url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fence, err := s.AcquireLease(ctx, store.RolloutLease, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.CreateRollout(ctx, store.Rollout{ID: "r-1", State: "PENDING"})
	if err != nil {
		t.Fatal(err)
	}
	r.Version, r.State = 2, "RUNNING"
	if _, err := s.UpdateRollout(ctx, 1, r, fence); err != nil {
		t.Fatal(err)
	}
	if err := s.PutExecutions(ctx, "r-1", fence, []store.Execution{{DeviceID: "d1", Status: "PENDING"}}); err != nil {
		t.Fatal(err)
	}

	opts, _ := goredis.ParseURL(url)
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	keys, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	d1 := prefix + redis.BucketTag("d1") + ":"
	rollouts, fences := 0, 0
	for _, k := range keys {
		switch {
		case strings.HasPrefix(k, prefix+"{rollouts}:"):
			rollouts++
		case strings.HasSuffix(k, ":fence:"+store.RolloutLease):
			fences++ // every bucket learns the new holder's token
		case k == d1+"rexec:r-1":
		default:
			t.Errorf("unexpected key %q", k)
		}
	}
	if rollouts != 5 { // docs, ids, buckets:r-1, lease:rollouts, fence:rollouts
		t.Errorf("%d keys in {rollouts}, want 5", rollouts)
	}
	if fences != redis.Buckets {
		t.Errorf("%d bucket fences, want %d", fences, redis.Buckets)
	}
	if n, _ := rdb.Exists(ctx, d1+"rexec:r-1").Result(); n != 1 {
		t.Errorf("no execution hash in d1's bucket %s", d1)
	}
	ttl, err := rdb.PTTL(ctx, prefix+"{rollouts}:lease:"+store.RolloutLease).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= 0 || ttl > time.Minute {
		t.Errorf("lease TTL %v, want within a minute", ttl)
	}
}

// TestEnrollmentKeys checks that a device's enrollment keys share its hash
// tag (the scripts touch them together), and that their TTL comes from the
// store's clock, not from the date on the Redis host: a store whose clock
// runs a year ahead still keeps an enrollment for its lifetime plus a day.
func TestEnrollmentKeys(t *testing.T) {
	ctx := context.Background()
	url := testredis.URL(t)
	prefix := testredis.Prefix(t)
	s, err := redis.Open(ctx, url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ahead := func() time.Time { return testclock.Now().Add(365 * 24 * time.Hour) }
	s.SetClock(ahead)
	now := ahead()
	e := store.Enrollment{TokenSHA256: "ab12", DeviceID: "gw-7", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := s.PutEnrollment(ctx, e, false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TakeEnrollment(ctx, "ab12", "c", now); err != nil {
		t.Fatalf("TakeEnrollment on a clock a year ahead = %v", err)
	}

	opts, _ := goredis.ParseURL(url)
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	keys, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{prefix + "enroll:{gw-7}": true, prefix + "enroll:{gw-7}:ab12": true, prefix + "enrollment:ab12": true}
	if len(keys) != len(want) {
		t.Errorf("keys %q, want %d", keys, len(want))
	}
	for _, k := range keys {
		if !want[k] {
			t.Errorf("unexpected key %q", k)
		}
	}
	for _, k := range []string{prefix + "enroll:{gw-7}:ab12", prefix + "enrollment:ab12"} {
		ttl, err := rdb.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if lo, hi := 25*time.Hour-time.Minute, 25*time.Hour; ttl < lo || ttl > hi {
			t.Errorf("%s: TTL %v, want about 25h (an hour to expiry plus a day)", k, ttl)
		}
	}
	if ttl, _ := rdb.PTTL(ctx, prefix+"enroll:{gw-7}").Result(); ttl != -1 {
		t.Errorf("device enrollment state TTL %v, want none (kept for good)", ttl)
	}
}

// TestDeviceKeysInBucket checks that everything a device write stores is
// in the device's bucket: its document, history and attestations and its
// index and counter entries.
func TestDeviceKeysInBucket(t *testing.T) {
	ctx := context.Background()
	url := testredis.URL(t)
	prefix := testredis.Prefix(t)
	s, err := redis.Open(ctx, url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := store.Device{ID: "gw-42", Labels: map[string]string{"model": "gw2"}}
	if _, _, err := s.CreateDevice(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDesired(ctx, "gw-42", 0, store.Desired{Version: 1, JobID: "j1"}, store.Write{Event: store.Event{Kind: "desired_set"}}); err != nil {
		t.Fatal(err)
	}
	rep := store.Reported{Version: 1, Bundle: store.Bundle{TargetPath: "fw.bin"}, Job: store.Job{ID: "j1", DesiredVersion: 1, Status: "SUCCEEDED"}}
	att := &store.Attestation{JobID: "j1", Envelope: []byte("{}")}
	if _, err := s.SetReported(ctx, "gw-42", 0, rep, store.Write{Event: store.Event{Kind: "job_ended"}, Attestation: att}); err != nil {
		t.Fatal(err)
	}

	opts, _ := goredis.ParseURL(url)
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	keys, err := rdb.Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	b := prefix + redis.BucketTag("gw-42") + ":"
	want := []string{b + "dev:gw-42", b + "ev:gw-42", b + "att:gw-42", b + "ids", b + "l:model=gw2",
		b + "s:SUCCEEDED", b + "b:fw.bin", b + "seen", b + "count"}
	slices.Sort(keys)
	slices.Sort(want)
	if !slices.Equal(keys, want) {
		t.Errorf("keys %q, want %q", keys, want)
	}
}

func BenchmarkStore(b *testing.B) {
	url := testredis.URL(b)
	storetest.Bench(b, func(b *testing.B) store.Devices {
		s, err := redis.Open(context.Background(), url, testredis.Prefix(b))
		if err != nil {
			b.Fatal(err)
		}
		return s
	})
}

func TestAuditConformance(t *testing.T) {
	url := testredis.URL(t)
	storetest.RunAudit(t, func(t *testing.T) store.Audit {
		s, err := redis.Open(context.Background(), url, testredis.Prefix(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
