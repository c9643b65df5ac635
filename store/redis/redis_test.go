package redis_test

import (
	"context"
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

// TestRolloutKeysShareASlot checks that every key of rollouts and leases
// carries the {rollouts} hash tag (one Redis Cluster slot, so the fenced
// scripts may touch them together), and that leases expire by Redis's TTL.
func TestRolloutKeysShareASlot(t *testing.T) {
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
	if len(keys) != 5 { // docs, ids, exec:r-1, lease:rollouts, fence:rollouts
		t.Errorf("keys %q, want 5", keys)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix+"{rollouts}:") {
			t.Errorf("key %q is outside the {rollouts} slot", k)
		}
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

// TestListSkipsHalfCreated checks the index-first write order: an id whose
// device hash never landed is not listed.
func TestListSkipsHalfCreated(t *testing.T) {
	ctx := context.Background()
	url := testredis.URL(t)
	prefix := testredis.Prefix(t)
	s, err := redis.Open(ctx, url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	opts, _ := goredis.ParseURL(url)
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	if err := rdb.ZAdd(ctx, prefix+"devices", goredis.Z{Member: "ghost"}).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: "real"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.ListDevices(ctx, store.ListOptions{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != "real" {
		t.Errorf("ListDevices = %+v, want only \"real\"", got)
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
