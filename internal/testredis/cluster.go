package testredis

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// EnvCluster names the variable holding the seed addresses
// (host:port,host:port,...) of an already running Redis Cluster.
const EnvCluster = "FERRY_TEST_REDIS_CLUSTER"

var (
	clusterOnce  sync.Once
	clusterSeeds []string
	clusterErr   error
)

// Cluster returns the seed addresses of a Redis Cluster of three masters
// (no replicas) with every slot served. Tests share one cluster per test
// binary; give each test its own key prefix (Prefix). It is the cluster
// named by FERRY_TEST_REDIS_CLUSTER or, without it, one started from
// redis-server and redis-cli on PATH on free loopback ports for the rest of
// the test binary's life (without persistence, so it is quick).
func Cluster(t testing.TB) []string {
	t.Helper()
	if env := os.Getenv(EnvCluster); env != "" {
		return strings.Split(env, ",")
	}
	clusterOnce.Do(func() {
		var c *ClusterSet
		c, clusterErr = startCluster(3, false)
		if clusterErr == nil {
			clusterSeeds = c.Seeds
		}
	})
	if clusterErr != nil {
		t.Fatalf("no Redis Cluster for this test: set %s or install redis-server and redis-cli (scripts/test does): %v", EnvCluster, clusterErr)
	}
	return clusterSeeds
}

// ClusterSet is a Redis Cluster of a test's own: its masters can be
// stopped and started again on the same port and directory.
type ClusterSet struct {
	// Seeds are the masters' addresses, Seeds[i] for node i.
	Seeds []string

	mu    sync.Mutex
	nodes []*node
}

// PrivateCluster starts a Redis Cluster of three masters for t alone, with
// appendonly yes and appendfsync always, so that every write a master
// acknowledged survives its SIGKILL and restart. It is stopped at the end of
// the test.
func PrivateCluster(t testing.TB) *ClusterSet {
	t.Helper()
	c, err := startCluster(3, true)
	if err != nil {
		t.Fatalf("private Redis Cluster: %v", err)
	}
	t.Cleanup(c.stopAll)
	return c
}

// Kill stops master i with SIGKILL and waits until it has exited.
func (c *ClusterSet) Kill(t testing.TB, i int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nodes[i].kill()
}

// Restart starts master i again (after Kill) on the same port and
// directory, and waits until the cluster serves every slot again.
func (c *ClusterSet) Restart(t testing.TB, i int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.nodes[i].start(); err != nil {
		t.Fatalf("restart cluster node %d: %v", i, err)
	}
	if err := waitClusterOK(c.Seeds, 30*time.Second); err != nil {
		t.Fatalf("restart cluster node %d: %v", i, err)
	}
}

func (c *ClusterSet) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range c.nodes {
		n.kill()
		os.RemoveAll(n.dir)
	}
}

func startCluster(masters int, durable bool) (*ClusterSet, error) {
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, err
	}
	// Each node has a client port and a cluster bus port of its own.
	ports, err := freePorts(2 * masters)
	if err != nil {
		return nil, err
	}
	c := &ClusterSet{}
	for i := range masters {
		port, bus := ports[2*i], ports[2*i+1]
		args := []string{"--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "3000"}
		if durable {
			args = append(args, "--appendonly", "yes", "--appendfsync", "always")
		} else {
			args = append(args, "--appendonly", "no")
		}
		n, err := newNode(port, args)
		if err != nil {
			c.stopAll()
			return nil, err
		}
		c.nodes = append(c.nodes, n)
		c.Seeds = append(c.Seeds, n.addr)
	}
	create := append([]string{"--cluster", "create"}, c.Seeds...)
	create = append(create, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command(cli, create...).CombinedOutput(); err != nil {
		c.stopAll()
		return nil, fmt.Errorf("redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := waitClusterOK(c.Seeds, 30*time.Second); err != nil {
		c.stopAll()
		return nil, err
	}
	return c, nil
}

// waitClusterOK waits until every node says cluster_state:ok with all
// 16384 slots served and knows every other node.
func waitClusterOK(addrs []string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		ok := true
		for _, a := range addrs {
			info, err := clusterInfo(a)
			if err != nil {
				ok, last = false, err.Error()
				break
			}
			if !strings.Contains(info, "cluster_state:ok") ||
				!strings.Contains(info, "cluster_slots_ok:16384") ||
				!strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(len(addrs))) {
				ok, last = false, a+": "+info
				break
			}
		}
		if ok {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("cluster not ready after %v: %s", within, last)
}

func clusterInfo(addr string) (string, error) {
	c := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return c.ClusterInfo(ctx).Result()
}

// node is one redis-server of a cluster or a Sentinel set, with a
// directory of its own that outlives a restart.
type node struct {
	addr string
	port int
	dir  string
	args []string // extra arguments, after the common ones
	conf string   // the config file of a sentinel, or ""
	srv  *server  // nil while stopped
}

func newNode(port int, args []string) (*node, error) {
	dir, err := os.MkdirTemp("", "ferry-redis-")
	if err != nil {
		return nil, err
	}
	n := &node{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), port: port, dir: dir, args: args}
	if err := n.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return n, nil
}

func (n *node) start() error {
	if n.srv != nil {
		return fmt.Errorf("%s is running", n.addr)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return err
	}
	args := []string{"--port", strconv.Itoa(n.port), "--bind", "127.0.0.1",
		"--dir", n.dir, "--logfile", filepath.Join(n.dir, "redis.log")}
	if n.conf != "" {
		args = append([]string{n.conf, "--sentinel"}, args...)
	} else {
		args = append(args, "--save", "")
	}
	args = append(args, n.args...)
	srv, err := spawn(bin, args, n.addr)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(n.dir, "redis.log"))
		return fmt.Errorf("%w\n%s", err, tail(log, 2000))
	}
	n.srv = srv
	return nil
}

func (n *node) kill() {
	if n.srv == nil {
		return
	}
	n.srv.Process.Kill()
	<-n.srv.done
	n.srv = nil
}

// spawn runs bin with args and waits until addr accepts connections.
func spawn(bin string, args []string, addr string) (*server, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = dieWithParent()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	srv := &server{Cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(srv.done) }()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-srv.done:
			return nil, fmt.Errorf("redis-server on %s exited at start", addr)
		default:
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return srv, nil
		}
	}
	cmd.Process.Kill()
	<-srv.done
	return nil, fmt.Errorf("redis-server did not start on %s", addr)
}

// freePorts returns n distinct loopback ports that nothing listened on a
// moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
