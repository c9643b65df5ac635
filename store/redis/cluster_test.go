package redis_test

import (
	"context"
	"strings"
	"testing"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
	"github.com/ferryhq/ferry/store/storetest"
)

// clusterURL is the redis+cluster:// URL of the shared test cluster.
func clusterURL(t testing.TB) string {
	return "redis+cluster://" + strings.Join(testredis.Cluster(t), ",")
}

func openCluster(t *testing.T) *redis.Store {
	s, err := redis.Open(context.Background(), clusterURL(t), testredis.Prefix(t))
	if err != nil {
		t.Fatal(err)
	}
	s.SetClock(testclock.Now)
	t.Cleanup(func() { s.Close() })
	return s
}

// The conformance suites again, on a Redis Cluster of three masters.

func TestClusterConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Devices { return openCluster(t) })
}

func TestClusterCredentialsConformance(t *testing.T) {
	storetest.RunCredentials(t, func(t *testing.T) store.Credentials { return openCluster(t) })
}

func TestClusterRolloutsConformance(t *testing.T) {
	storetest.RunRollouts(t, func(t *testing.T) storetest.RolloutStore { return openCluster(t) })
}

func TestClusterAuditConformance(t *testing.T) {
	storetest.RunAudit(t, func(t *testing.T) store.Audit { return openCluster(t) })
}
