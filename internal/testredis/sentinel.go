package testredis

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// MasterName is the name the sentinels of a SentinelSet monitor their
// primary under.
const MasterName = "ferry"

// SentinelSet is a primary, one replica and three sentinels (quorum 2) of a
// test's own. The sentinels call the primary down after 1 s without an
// answer, so a failover takes a few seconds.
type SentinelSet struct {
	MasterName string
	// Sentinels are the sentinels' addresses.
	Sentinels []string
	// Primary and Replica are the addresses of the two data servers as
	// they were started; after a failover they have swapped roles.
	Primary, Replica string

	mu       sync.Mutex
	data     []*node // [0] started as primary, [1] as replica
	sentinel []*node
	killed   *node
}

// Sentinel starts a SentinelSet for t alone (a test may kill its primary)
// and waits until each sentinel knows the replica and the other two
// sentinels. Everything is stopped at the end of the test.
func Sentinel(t testing.TB) *SentinelSet {
	t.Helper()
	s, err := startSentinel()
	if err != nil {
		t.Fatalf("Redis Sentinel set: %v", err)
	}
	t.Cleanup(s.stopAll)
	return s
}

func startSentinel() (*SentinelSet, error) {
	ports, err := freePorts(5)
	if err != nil {
		return nil, err
	}
	s := &SentinelSet{MasterName: MasterName}
	fast := []string{"--appendonly", "no", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"}
	primary, err := newNode(ports[0], fast)
	if err != nil {
		return nil, err
	}
	s.data = append(s.data, primary)
	replica, err := newNode(ports[1], append([]string{"--replicaof", "127.0.0.1", strconv.Itoa(ports[0])}, fast...))
	if err != nil {
		s.stopAll()
		return nil, err
	}
	s.data = append(s.data, replica)
	s.Primary, s.Replica = primary.addr, replica.addr
	for _, port := range ports[2:] {
		n, err := newSentinelNode(port, ports[0])
		if err != nil {
			s.stopAll()
			return nil, err
		}
		s.sentinel = append(s.sentinel, n)
		s.Sentinels = append(s.Sentinels, n.addr)
	}
	if err := s.waitReady(30 * time.Second); err != nil {
		s.stopAll()
		return nil, err
	}
	return s, nil
}

func newSentinelNode(port, primaryPort int) (*node, error) {
	dir, err := os.MkdirTemp("", "ferry-sentinel-")
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "sentinel.conf")
	text := fmt.Sprintf(`sentinel monitor %[1]s 127.0.0.1 %[2]d 2
sentinel down-after-milliseconds %[1]s 1000
sentinel failover-timeout %[1]s 4000
sentinel parallel-syncs %[1]s 1
`, MasterName, primaryPort)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	n := &node{addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: dir, conf: conf}
	if err := n.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return n, nil
}

// waitReady waits until every sentinel sees the primary, one replica and
// two other sentinels.
func (s *SentinelSet) waitReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		ready := true
		for _, a := range s.Sentinels {
			m, err := sentinelMaster(a)
			if err != nil {
				ready, last = false, err.Error()
				break
			}
			if m["num-slaves"] != "1" || m["num-other-sentinels"] != "2" || strings.Contains(m["flags"], "down") {
				ready, last = false, fmt.Sprintf("%s: %v", a, m)
				break
			}
		}
		if ready {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("sentinels not ready after %v: %s", within, last)
}

func sentinelMaster(addr string) (map[string]string, error) {
	c := goredis.NewSentinelClient(&goredis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.Master(ctx, MasterName).Result()
}

// CurrentPrimary returns the address of the primary as the first sentinel
// that answers sees it.
func (s *SentinelSet) CurrentPrimary(t testing.TB) string {
	t.Helper()
	var err error
	for _, a := range s.Sentinels {
		var m map[string]string
		if m, err = sentinelMaster(a); err == nil {
			return m["ip"] + ":" + m["port"]
		}
	}
	t.Fatalf("no sentinel answers: %v", err)
	return ""
}

// KillPrimary stops the current primary with SIGKILL and returns its
// address; the sentinels then promote the replica.
func (s *SentinelSet) KillPrimary(t testing.TB) string {
	t.Helper()
	addr := s.CurrentPrimary(t)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.data {
		if n.addr == addr && n.srv != nil {
			n.kill()
			s.killed = n
			return addr
		}
	}
	t.Fatalf("primary %s is not a server of this set", addr)
	return ""
}

// WaitFailover waits until the sentinels name a primary other than old
// and returns it.
func (s *SentinelSet) WaitFailover(t testing.TB, old string, within time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if m, err := sentinelMaster(s.Sentinels[0]); err == nil {
			if addr := m["ip"] + ":" + m["port"]; addr != old && !strings.Contains(m["flags"], "down") {
				return addr
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no failover from %s within %v", old, within)
	return ""
}

// RestartKilled starts the server KillPrimary stopped again, on the same
// port, as a replica of the current primary (as an operator would; the
// sentinels would convert it too, but only after about ten seconds). It
// waits until its replication link is up.
func (s *SentinelSet) RestartKilled(t testing.TB) {
	t.Helper()
	primary := s.CurrentPrimary(t)
	host, port, _ := strings.Cut(primary, ":")
	s.mu.Lock()
	n := s.killed
	s.killed = nil
	var err error
	if n != nil {
		saved := n.args
		n.args = append(append([]string(nil), saved...), "--replicaof", host, port)
		err = n.start()
		n.args = saved
	}
	s.mu.Unlock()
	if n == nil {
		t.Fatal("RestartKilled without KillPrimary")
	}
	if err != nil {
		t.Fatalf("restart %s: %v", n.addr, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		c := goredis.NewClient(&goredis.Options{Addr: n.addr, MaxRetries: -1})
		info, err := c.Info(context.Background(), "replication").Result()
		c.Close()
		if err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up") {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s did not come back as a replica", n.addr)
}

func (s *SentinelSet) stopAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range append(s.sentinel, s.data...) {
		n.kill()
		os.RemoveAll(n.dir)
	}
}
