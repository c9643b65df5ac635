package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
	"github.com/ferryhq/ferry/store/redis"
)

// pidFile, in the data directory, names the ferryd that holds its embedded
// store. The lock itself is the database file's (bbolt's flock); the pid
// only says who holds it.
const pidFile = "ferryd.pid"

// openStore opens the configured backend: Redis (retried for
// RedisConnectTimeout) or the embedded store in the data directory.
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (store.Devices, error) {
	if cfg.RedisURL != "" {
		st, err := openRedis(ctx, cfg, log)
		if err != nil {
			return nil, err // never a typed nil in the interface
		}
		return st, nil
	}
	st, err := openEmbedded(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// openEmbedded opens <dir>/ferry.db. Another process holding it is told
// apart from other failures and named.
func openEmbedded(dir string) (*bolt.Store, error) {
	st, err := bolt.Open(filepath.Join(dir, "ferry.db"))
	if errors.Is(err, bolterrors.ErrTimeout) {
		holder := "another process"
		if pid := readPID(dir); pid > 0 {
			holder = fmt.Sprintf("another ferryd (pid %d)", pid)
		}
		return nil, fmt.Errorf("data directory %s is in use by %s: stop it, or give this one its own --data-dir (instances that share a store use --redis-url)", dir, holder)
	}
	if err != nil {
		return nil, err
	}
	// Best effort: the pid only helps the message above.
	_ = os.WriteFile(filepath.Join(dir, pidFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
	return st, nil
}

func readPID(dir string) int {
	raw, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// removePID removes the pid file if it names this process.
func removePID(dir string) {
	if readPID(dir) == os.Getpid() {
		os.Remove(filepath.Join(dir, pidFile))
	}
}

// openRedis connects to Redis, retrying with backoff while it does not
// answer, for at most cfg.RedisConnectTimeout (or until ctx ends). A URL
// that does not parse is not retried.
func openRedis(ctx context.Context, cfg Config, log *slog.Logger) (*redis.Store, error) {
	conn, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("--redis-url: %w", err)
	}
	addr := conn.String()
	start := time.Now()
	deadline := start.Add(cfg.RedisConnectTimeout)
	wait := 250 * time.Millisecond
	for {
		attempt, cancel := context.WithDeadline(ctx, earliest(deadline, time.Now().Add(5*time.Second)))
		// One dial without retries first, so that each attempt's own
		// cause (connection refused, a wrong password) is what is reported.
		cause := conn.Ping(attempt)
		if cause == nil {
			var st *redis.Store
			st, cause = redis.OpenConn(attempt, conn, cfg.RedisPrefix)
			if cause == nil {
				cancel()
				st.SetLogger(log)
				if cfg.RedisMinReplicas > 0 {
					st.SetMinReplicas(cfg.RedisMinReplicas, cfg.RedisMinReplicasTimeout)
				}
				if time.Since(start) > time.Second {
					log.Info("reached Redis", "addr", addr, "after", time.Since(start).Round(time.Millisecond))
				}
				return st, nil
			}
		}
		cancel()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("cannot reach Redis at %s: %w (stopped while retrying)", addr, cause)
		}
		if time.Now().Add(wait).After(deadline) {
			return nil, fmt.Errorf("cannot reach Redis at %s for %v: %w: start Redis there, or fix --redis-url (--redis-connect-timeout sets how long ferryd waits)",
				addr, cfg.RedisConnectTimeout, cause)
		}
		log.Warn(fmt.Sprintf("cannot reach Redis at %s: %v; retrying", addr, cause),
			"addr", addr, "retry_in", wait, "gives_up_in", time.Until(deadline).Round(time.Second))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cannot reach Redis at %s: %w (stopped while retrying)", addr, cause)
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
