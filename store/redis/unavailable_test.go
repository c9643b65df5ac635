package redis_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
)

// startRedis runs a redis-server of the test's own on a free loopback port
// with extra arguments, and returns its address. It is killed at the end
// of the test.
func startRedis(t *testing.T, args ...string) string {
	t.Helper()
	port, err := testredis.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir()}, args...)
	cmd := exec.Command("redis-server", argv...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-server: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server did not start on %s", addr)
		}
	}
}

// newStore returns a Store on a client of its own for addr, and the
// client (with the store's hook installed).
func newStore(t *testing.T, addr string) (*redis.Store, *goredis.Client) {
	t.Helper()
	rdb := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: 1, DialTimeout: time.Second})
	t.Cleanup(func() { rdb.Close() })
	return redis.New(rdb, testredis.Prefix(t)), rdb
}

// TestUnavailableWhileDown: with its Redis gone, every kind of store call
// (plain commands, scripts, pipelines, Ping) fails with an error that is
// store.ErrUnavailable; a caller's own cancellation stays a cancellation;
// once Redis is back the same store works again.
func TestUnavailableWhileDown(t *testing.T) {
	ctx := t.Context()
	port, err := testredis.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	_, stop := testredis.Private(t, port)
	s, _ := newStore(t, fmt.Sprintf("127.0.0.1:%d", port))
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	stop()

	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"Ping", s.Ping},
		{"GetDevice", func(ctx context.Context) error { _, err := s.GetDevice(ctx, "d1"); return err }},
		{"CreateDevice", func(ctx context.Context) error { _, _, err := s.CreateDevice(ctx, store.Device{ID: "d2"}); return err }},
		{"SetDesired (script)", func(ctx context.Context) error {
			_, err := s.SetDesired(ctx, "d1", 0, store.Desired{Version: 1}, store.Write{})
			return err
		}},
		{"ListDevices (pipeline)", func(ctx context.Context) error {
			_, err := s.ListDevices(ctx, store.ListOptions{Limit: 10})
			return err
		}},
		{"GetRollout", func(ctx context.Context) error { _, err := s.GetRollout(ctx, "r1"); return err }},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			err := c.call(ctx)
			if !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("with Redis down: %v, want store.ErrUnavailable", err)
			}
			canceled, cancel := context.WithCancel(ctx)
			cancel()
			if err := c.call(canceled); err == nil || errors.Is(err, store.ErrUnavailable) {
				t.Errorf("with the caller's context canceled: %v, want the cancellation, not ErrUnavailable", err)
			}
		})
	}

	testredis.Private(t, port) // back, empty
	deadline := time.Now().Add(10 * time.Second)
	for s.Ping(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the store did not recover once Redis was back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: "d1"}); err != nil {
		t.Errorf("CreateDevice after Redis came back: %v", err)
	}
}

// TestNotUnavailable: answers from a Redis that serves are never marked
// unavailable: a missing key (goredis.Nil, exactly), a missing device, a
// script error, a wrong type. Script.Run still falls back from EVALSHA to
// EVAL when the script cache was flushed.
func TestNotUnavailable(t *testing.T) {
	ctx := t.Context()
	s, rdb := newStore(t, startRedis(t))
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: "d2"}); err != nil {
		t.Fatalf("a script after SCRIPT FLUSH (NOSCRIPT fallback): %v", err)
	}
	if err := rdb.Set(ctx, "plain", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name string
		err  error
		want func(error) bool
	}{
		{"missing key", rdb.Get(ctx, "nothing-here").Err(), func(err error) bool { return err == goredis.Nil }},
		{"missing key in a pipeline", func() error {
			_, err := rdb.Pipelined(ctx, func(p goredis.Pipeliner) error { p.Get(ctx, "nothing-here"); return nil })
			return err
		}(), func(err error) bool { return err == goredis.Nil }},
		{"missing device", func() error { _, err := s.GetDevice(ctx, "nobody"); return err }(),
			func(err error) bool { return errors.Is(err, store.ErrNotFound) }},
		{"script error", goredis.NewScript(`return redis.error_reply("ERR broken")`).Run(ctx, rdb, nil).Err(),
			func(err error) bool { return goredis.HasErrorPrefix(err, "broken") }},
		{"wrong type", rdb.HGet(ctx, "plain", "f").Err(),
			func(err error) bool { return goredis.HasErrorPrefix(err, "WRONGTYPE") }},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.err == nil || errors.Is(c.err, store.ErrUnavailable) || !c.want(c.err) {
				t.Errorf("got %v (unavailable: %v)", c.err, errors.Is(c.err, store.ErrUnavailable))
			}
		})
	}
}

// TestUnavailableReplies: Redis replies that mean "not now" are marked
// unavailable and keep the Redis error in their chain: READONLY from a
// server that became a replica, MASTERDOWN from a replica that lost its
// primary, CLUSTERDOWN from a cluster node that serves no slot.
func TestUnavailableReplies(t *testing.T) {
	ctx := t.Context()
	gone, err := testredis.FreePort() // a primary that is not there
	if err != nil {
		t.Fatal(err)
	}
	replica, rdb := newStore(t, startRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(gone)))
	stale, _ := newStore(t, startRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(gone), "--replica-serve-stale-data", "no"))
	cluster, _ := newStore(t, startRedis(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"))

	for _, c := range []struct {
		name   string
		call   func() error
		prefix string
	}{
		{"READONLY", func() error { _, _, err := replica.CreateDevice(ctx, store.Device{ID: "d1"}); return err }, "READONLY"},
		{"READONLY plain command", func() error { return rdb.Set(ctx, "k", "v", 0).Err() }, "READONLY"},
		{"MASTERDOWN", func() error { _, err := stale.GetDevice(ctx, "d1"); return err }, "MASTERDOWN"},
		{"CLUSTERDOWN", func() error { _, err := cluster.GetDevice(ctx, "d1"); return err }, "CLUSTERDOWN"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			if !errors.Is(err, store.ErrUnavailable) || !goredis.HasErrorPrefix(err, c.prefix) {
				t.Errorf("got %v, want store.ErrUnavailable around a %s reply", err, c.prefix)
			}
		})
	}
}
