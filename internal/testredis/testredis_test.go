package testredis_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/internal/testredis"
)

// TestCluster checks that the shared cluster serves keys of every slot
// from three masters.
func TestCluster(t *testing.T) {
	ctx := context.Background()
	seeds := testredis.Cluster(t)
	if len(seeds) != 3 {
		t.Fatalf("seeds = %v, want three", seeds)
	}
	c := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: seeds})
	defer c.Close()
	prefix := testredis.Prefix(t)
	for i := range 100 {
		if err := c.Set(ctx, fmt.Sprintf("%s%d", prefix, i), i, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var masters atomic.Int32 // ForEachMaster calls concurrently
	err := c.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error {
		masters.Add(1)
		n, err := m.DBSize(ctx).Result()
		if err == nil && n == 0 {
			err = fmt.Errorf("master %s holds none of 100 keys", m.Options().Addr)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := masters.Load(); n != 3 {
		t.Fatalf("%d masters, want 3", n)
	}
}

// TestPrivateClusterRestart checks that a write a master acknowledged
// survives its SIGKILL and restart.
func TestPrivateClusterRestart(t *testing.T) {
	ctx := context.Background()
	cl := testredis.PrivateCluster(t)
	c := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: cl.Seeds})
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	owner := -1
	for i, a := range cl.Seeds {
		n := goredis.NewClient(&goredis.Options{Addr: a})
		if n.Exists(ctx, "k").Val() == 1 {
			owner = i
		}
		n.Close()
	}
	if owner < 0 {
		t.Fatal("no master holds k")
	}
	cl.Kill(t, owner)
	cl.Restart(t, owner)
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("after restart: k = %q, %v", v, err)
	}
}

// TestSentinelFailover checks that the sentinels promote the replica when
// the primary is killed, and take the old primary back as a replica.
func TestSentinelFailover(t *testing.T) {
	ctx := context.Background()
	t0 := time.Now()
	s := testredis.Sentinel(t)
	t.Logf("sentinel set ready in %v", time.Since(t0).Round(100*time.Millisecond))
	c := goredis.NewFailoverClient(&goredis.FailoverOptions{MasterName: s.MasterName, SentinelAddrs: s.Sentinels})
	defer c.Close()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 = %d, %v", n, err)
	}
	old := s.KillPrimary(t)
	if old != s.Primary {
		t.Fatalf("killed %s, want the first primary %s", old, s.Primary)
	}
	start := time.Now()
	if now := s.WaitFailover(t, old, 30*time.Second); now != s.Replica {
		t.Fatalf("new primary %s, want the replica %s", now, s.Replica)
	}
	t.Logf("failover in %v", time.Since(start).Round(100*time.Millisecond))
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("after failover: k = %q, %v", v, err)
	}
	t1 := time.Now()
	s.RestartKilled(t)
	t.Logf("old primary a replica again in %v", time.Since(t1).Round(100*time.Millisecond))
	if n, err := c.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 after restart = %d, %v", n, err)
	}
}
