package redis_test

import (
	"context"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

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
