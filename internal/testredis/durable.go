package testredis

import (
	"os"
	"sync"
	"testing"
)

// DurableServer is a single redis-server of a test's own that keeps its
// data across a crash: appendonly yes with appendfsync always, so every
// write it acknowledged survives a SIGKILL. Kill and Restart stop and start
// it on the same port and directory.
type DurableServer struct {
	mu sync.Mutex
	n  *node
}

// Durable starts a DurableServer for t on a free loopback port; it is
// stopped at the end of the test. It needs redis-server on PATH.
func Durable(t testing.TB) *DurableServer {
	t.Helper()
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	n, err := newNode(ports[0], []string{"--appendonly", "yes", "--appendfsync", "always"})
	if err != nil {
		t.Fatalf("durable redis-server: %v", err)
	}
	s := &DurableServer{n: n}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.n.kill()
		os.RemoveAll(s.n.dir)
	})
	return s
}

// URL is the server's redis:// URL (database 0).
func (s *DurableServer) URL() string { return "redis://" + s.n.addr + "/0" }

// Kill stops the server with SIGKILL, as a crash would, and waits until it
// has exited.
func (s *DurableServer) Kill(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n.kill()
}

// Restart starts the server again (after Kill) on the same port and
// directory (so it reloads its append-only file), and returns once it
// accepts connections.
func (s *DurableServer) Restart(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.n.start(); err != nil {
		t.Fatalf("restart redis-server on %s: %v", s.n.addr, err)
	}
}
