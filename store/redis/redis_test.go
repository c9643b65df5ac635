package redis_test

import (
	"context"
	"testing"

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
