package server_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/server"
)

// syncBuffer is a log destination safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startConfig is a configuration on loopback ports in a fresh data
// directory.
func startConfig(t *testing.T) server.Config {
	cfg := server.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.DeviceAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0"
	return cfg
}

// TestStartFailures: a start that cannot succeed returns an error that
// says what is wrong and what to do, releases what it opened, and never
// panics.
func TestStartFailures(t *testing.T) {
	running := ferrytest.Start(t, ferrytest.Embedded, nil)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free, err := testredis.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	unreachable := fmt.Sprintf("127.0.0.1:%d", free)

	tests := []struct {
		name string
		edit func(*server.Config)
		want []string // in the error, in order
		log  string   // in the log
	}{
		{"data directory in use", func(c *server.Config) { c.DataDir = running.Config().DataDir },
			[]string{"data directory " + running.Config().DataDir + " is in use by another ferryd (pid " + strconv.Itoa(os.Getpid()) + ")", "--data-dir"}, ""},
		{"Redis unreachable", func(c *server.Config) {
			c.RedisURL, c.RedisConnectTimeout = "redis://"+unreachable+"/0", 1500*time.Millisecond
		}, []string{"store: cannot reach Redis at " + unreachable + " for 1.5s: ", "connection refused", "--redis-connect-timeout"},
			"cannot reach Redis at " + unreachable + ": "},
		{"Redis URL malformed", func(c *server.Config) { c.RedisURL = "http://localhost:6379" }, []string{"--redis-url: "}, ""},
		{"Redis Cluster unreachable", func(c *server.Config) {
			c.RedisURL, c.RedisConnectTimeout = "redis+cluster://"+unreachable+","+unreachable, time.Second
		}, []string{"store: cannot reach Redis at " + unreachable + "," + unreachable + " (Redis Cluster) for 1s: "}, ""},
		{"Sentinel without a master name", func(c *server.Config) { c.RedisURL = "redis+sentinel://:secret@" + unreachable },
			[]string{"--redis-url: ", "needs the master name"}, ""},
		{"one-server URL with several hosts", func(c *server.Config) { c.RedisURL = "redis://h1:6379,h2:6379" },
			[]string{"--redis-url: ", "use redis+cluster://"}, ""},
		{"min replicas without Redis", func(c *server.Config) { c.RedisMinReplicas = 1 },
			[]string{"Redis min replicas need the Redis store (--redis-url)"}, ""},
		{"device port in use", func(c *server.Config) { c.DeviceAddr = busy.Addr().String() },
			[]string{"device port: ", "address already in use", "choose another address with --device-addr"}, ""},
		{"API port in use", func(c *server.Config) { c.APIAddr = busy.Addr().String() },
			[]string{"API port: ", "address already in use", "choose another address with --api-addr"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := startConfig(t)
			tt.edit(&cfg)
			var logs syncBuffer
			srv, err := server.New(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
			if err == nil {
				srv.Close()
				t.Fatal("New succeeded")
			}
			msg := err.Error()
			rest := msg
			for _, w := range tt.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("New: %q\nwant (in order) %q", msg, tt.want)
				}
				rest = rest[i+len(w):]
			}
			if !strings.Contains(logs.String(), tt.log) {
				t.Errorf("log:\n%s\nwant %q", logs.String(), tt.log)
			}
		})
	}

	// The running ferryd still works, and its pid file is its own.
	if code, _ := probe(t, running, "GET", server.ReadinessPath); code != 200 {
		t.Errorf("the first ferryd: readiness %d after the refused starts", code)
	}
	if raw, err := os.ReadFile(filepath.Join(running.Config().DataDir, "ferryd.pid")); err != nil || strings.TrimSpace(string(raw)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("pid file: %q, %v", raw, err)
	}
}

// TestRedisLate: a Redis that comes up while ferryd retries is used.
func TestRedisLate(t *testing.T) {
	port, err := testredis.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := startConfig(t)
	cfg.RedisURL = fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	cfg.RedisPrefix = testredis.Prefix(t)
	cfg.RedisConnectTimeout = time.Minute
	var logs syncBuffer
	type result struct {
		srv *server.Server
		err error
	}
	done := make(chan result, 1)
	go func() {
		srv, err := server.New(context.Background(), cfg, slog.New(slog.NewTextHandler(&logs, nil)))
		done <- result{srv, err}
	}()
	// Start Redis once ferryd said it retries.
	for !strings.Contains(logs.String(), "; retrying") {
		select {
		case r := <-done:
			t.Fatalf("New returned before Redis started: %v", r.err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	testredis.Private(t, port)
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("New: %v\nlog:\n%s", r.err, logs.String())
		}
		r.srv.Close()
	case <-time.After(30 * time.Second):
		t.Fatalf("New did not return after Redis started; log:\n%s", logs.String())
	}
}
