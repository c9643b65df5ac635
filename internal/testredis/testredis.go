// Package testredis gives tests real Redis: a single server, a Redis
// Cluster and a Sentinel set, all on loopback.
//
//   - URL: a single server shared by the test binary. The test command
//     (scripts/test) starts a private redis-server and exports its address as
//     FERRY_TEST_REDIS_URL; run on its own (go test), the helper starts a
//     redis-server from PATH on a free loopback port instead. Private gives a
//     test a server of its own, to stop and start; Durable, one with
//     appendonly yes and appendfsync always, to SIGKILL and restart on the
//     same port and directory with nothing acknowledged lost.
//   - Cluster: the seed addresses of a Redis Cluster of three masters shared
//     by the test binary: FERRY_TEST_REDIS_CLUSTER (host:port,host:port,...)
//     or, without it, three redis-server --cluster-enabled yes joined with
//     redis-cli --cluster create on free loopback ports, returned once every
//     node says cluster_state:ok with all 16384 slots served. PrivateCluster
//     gives a test a cluster of its own with appendonly yes and appendfsync
//     always, whose masters it may kill and restart.
//   - Sentinel: a primary, one replica and three sentinels (quorum 2,
//     redis-server --sentinel) of the test's own, tuned so that a failover
//     takes about two seconds; the test may kill the primary.
//   - TLS: a TLS-only redis-server of the test's own with a self-signed
//     certificate for 127.0.0.1.
//
// Shared servers live as long as the test binary; a test's own are stopped
// at its end. On Linux the kernel kills every server when the test binary
// dies (proc_linux.go), and each server has a private directory. With no
// server to use, the test fails: Redis tests never skip silently.
package testredis

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// EnvURL names the variable holding the URL of an already running server.
const EnvURL = "FERRY_TEST_REDIS_URL"

var (
	startOnce sync.Once
	started   string
	startErr  error
)

// URL returns the URL of a Redis server for t. Tests share one server; give
// each test its own key prefix (Prefix) so they never see each other's keys.
func URL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	startOnce.Do(func() { started, startErr = start() })
	if startErr != nil {
		t.Fatalf("no Redis for this test: set %s or install redis-server (scripts/test does both): %v", EnvURL, startErr)
	}
	return started
}

// Prefix returns a key prefix unique to t.
func Prefix(t testing.TB) string {
	return fmt.Sprintf("test:%s:%d:", t.Name(), time.Now().UnixNano())
}

// start runs redis-server on a free loopback port for the rest of the test
// binary's life. On Linux the kernel kills it when the test process exits.
func start() (string, error) {
	port, err := FreePort()
	if err != nil {
		return "", err
	}
	url, _, err := run(port)
	return url, err
}

// FreePort returns a loopback TCP port that nothing listened on a moment
// ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Private starts a redis-server of t's own on port (0: a free one), for a
// test that stops it or starts it late; it is stopped at the end of the
// test, or earlier with stop. It needs redis-server on PATH.
func Private(t testing.TB, port int) (url string, stop func()) {
	t.Helper()
	if port == 0 {
		var err error
		if port, err = FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	url, cmd, err := run(port)
	if err != nil {
		t.Fatalf("private redis-server: %v", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cmd.Process.Kill()
			<-cmd.done
		})
	}
	t.Cleanup(stop)
	return url, stop
}

// server is a redis-server process; done closes when it has exited.
type server struct {
	*exec.Cmd
	done chan struct{}
}

func run(port int) (string, *server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "ferry-redis-")
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir,
		"--logfile", filepath.Join(dir, "redis.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	srv := &server{Cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); os.RemoveAll(dir); close(srv.done) }()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "redis://" + addr + "/0", srv, nil
		}
	}
	cmd.Process.Kill()
	return "", nil, fmt.Errorf("redis-server did not start on %s", addr)
}
