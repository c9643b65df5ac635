package redis_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
)

// clusterClient returns a client of the test cluster.
func clusterClient(t *testing.T) *goredis.ClusterClient {
	t.Helper()
	c := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: testredis.Cluster(t)})
	t.Cleanup(func() { c.Close() })
	return c
}

// monitor records the keys of every command a Redis server runs (MONITOR),
// scripts' own commands included, until stop.
type monitor struct {
	conn net.Conn
	r    *bufio.Reader
}

func startMonitor(t *testing.T, addr string) *monitor {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write([]byte("MONITOR\r\n")); err != nil {
		t.Fatal(err)
	}
	m := &monitor{conn: conn, r: bufio.NewReader(conn)}
	if line, err := m.r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "+OK") {
		t.Fatalf("MONITOR: %q, %v", line, err)
	}
	return m
}

// command is one line of MONITOR: who ran it ("lua" for a script) and the
// command with its arguments.
type command struct {
	from string
	args []string
}

// until reads commands until one is ECHO marker.
func (m *monitor) until(t *testing.T, marker string) []command {
	t.Helper()
	m.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var out []command
	for {
		line, err := m.r.ReadString('\n')
		if err != nil {
			t.Fatalf("MONITOR: %v", err)
		}
		// +1700000000.123456 [0 127.0.0.1:5000] "HSET" "key" "v"
		open, end := strings.Index(line, "["), strings.Index(line, "]")
		if open < 0 || end < open {
			t.Fatalf("MONITOR line %q", line)
		}
		from := strings.Fields(line[open+1 : end])[1]
		var args []string
		rest := strings.TrimSpace(line[end+1:])
		for rest != "" {
			s, err := strconv.QuotedPrefix(rest)
			if err != nil {
				t.Fatalf("MONITOR line %q: %v", line, err)
			}
			v, _ := strconv.Unquote(s)
			args = append(args, v)
			rest = strings.TrimSpace(rest[len(s):])
		}
		c := command{from: from, args: args}
		if strings.EqualFold(args[0], "echo") && len(args) == 2 && args[1] == marker {
			return out
		}
		out = append(out, c)
	}
}

// keys returns the keys c names: those declared to a script, or the first
// argument of a one-key command. Pub/sub channels are not keys.
func (c command) keys() []string {
	switch name := strings.ToLower(c.args[0]); name {
	case "evalsha", "eval", "evalsha_ro", "eval_ro":
		n, _ := strconv.Atoi(c.args[2])
		return c.args[3 : 3+n]
	case "publish", "spublish", "echo", "ping", "script", "hello", "client", "select", "wait":
		return nil
	default:
		if len(c.args) < 2 {
			return nil
		}
		return c.args[1:2]
	}
}

// TestReportPathStaysInBucket runs the report and heartbeat path (a report
// with an event and an attestation, a heartbeat batch) against a server of
// its own under MONITOR, and checks that every key any command touched,
// the scripts' own commands included, is in the device's bucket.
func TestReportPathStaysInBucket(t *testing.T) {
	ctx := context.Background()
	url, _ := testredis.Private(t, 0)
	opts, _ := goredis.ParseURL(url)
	prefix := testredis.Prefix(t)
	s, err := redis.Open(ctx, url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetClock(testclock.Now)
	now := testclock.Now()
	ids := []string{"gw-1", "gw-2", "gw-3"}
	for _, id := range ids {
		if _, _, err := s.CreateDevice(ctx, store.Device{ID: id, Labels: map[string]string{"model": "gw2"}, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SetDesired(ctx, id, 0, store.Desired{Version: 1, JobID: "j1", Bundle: store.Bundle{TargetPath: "fw-2.bin"}}, store.Write{}); err != nil {
			t.Fatal(err)
		}
	}
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	// Load the heartbeat script, so that MONITOR shows each script once.
	if err := s.MarkSeen(ctx, []store.Seen{{ID: "gw-1", At: now}}); err != nil {
		t.Fatal(err)
	}

	m := startMonitor(t, opts.Addr)
	for _, id := range ids {
		rep := store.Reported{Version: 1, DesiredVersion: 1, Bundle: store.Bundle{TargetPath: "fw-2.bin"}, LastSeen: now,
			Job: store.Job{ID: "j1", DesiredVersion: 1, Status: "SUCCEEDED", UpdatedAt: now}}
		w := store.Write{Event: store.Event{Time: now, Kind: "job_ended", JobID: "j1", Status: "SUCCEEDED"},
			Attestation: &store.Attestation{JobID: "j1", Envelope: []byte(`{"payload":"x"}`)}}
		if _, err := s.SetReported(ctx, id, 0, rep, w); err != nil {
			t.Fatal(err)
		}
	}
	var seen []store.Seen
	for i, id := range append(ids, "not-a-device") {
		seen = append(seen, store.Seen{ID: id, At: now.Add(time.Duration(i+1) * time.Second)})
	}
	if err := s.MarkSeen(ctx, seen); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Echo(ctx, "end-of-test").Err(); err != nil {
		t.Fatal(err)
	}
	cmds := m.until(t, "end-of-test")

	byBucket := map[string]bool{}
	for _, id := range append(ids, "not-a-device") {
		byBucket[prefix+redis.BucketTag(id)+":"] = true
	}
	scripts, inner := 0, 0
	for _, c := range cmds {
		if c.from == "lua" {
			inner++
		} else if strings.HasPrefix(strings.ToLower(c.args[0]), "eval") {
			scripts++
		}
		for _, k := range c.keys() {
			b, _, ok := strings.Cut(strings.TrimPrefix(k, prefix), ":")
			if !strings.HasPrefix(k, prefix) || !ok || !byBucket[prefix+b+":"] {
				t.Errorf("%s %q touches key %q outside the devices' buckets", c.from, c.args[0], k)
			}
		}
	}
	// One script per report, one per bucket of the heartbeat batch.
	if want := len(ids) + len(byBucket); scripts != want {
		t.Errorf("%d scripts ran, want %d", scripts, want)
	}
	if inner == 0 {
		t.Error("MONITOR showed none of the scripts' own commands")
	}
}

// TestMarkSeen checks MarkSeen on Redis: later times win, earlier ones and
// unknown ids are ignored, the documents' versions and histories do not
// move, and reads, SeenBefore listings and the silent count use the
// latest time.
func TestMarkSeen(t *testing.T) {
	ctx := context.Background()
	s, err := redis.Open(ctx, testredis.URL(t), testredis.Prefix(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := testclock.Now()
	for _, id := range []string{"a", "b"} {
		if _, _, err := s.CreateDevice(ctx, store.Device{ID: id, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SetReported(ctx, "b", 0, store.Reported{Version: 1, LastSeen: now.Add(time.Hour)}, store.Write{}); err != nil {
		t.Fatal(err)
	}
	mark := func(seen ...store.Seen) {
		t.Helper()
		if err := s.MarkSeen(ctx, seen); err != nil {
			t.Fatal(err)
		}
	}
	mark(store.Seen{ID: "a", At: now.Add(2 * time.Minute)}, store.Seen{ID: "ghost", At: now},
		store.Seen{ID: "b", At: now.Add(time.Minute)}) // b: earlier than its report
	mark(store.Seen{ID: "a", At: now.Add(time.Minute)}) // earlier than the last mark
	mark()

	a, err := s.GetDevice(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if !a.Reported.LastSeen.Equal(now.Add(2*time.Minute)) || a.Reported.Version != 0 {
		t.Errorf("a: last seen %v version %d, want %v and 0", a.Reported.LastSeen, a.Reported.Version, now.Add(2*time.Minute))
	}
	b, _ := s.GetDevice(ctx, "b")
	if !b.Reported.LastSeen.Equal(now.Add(time.Hour)) || b.Reported.Version != 1 {
		t.Errorf("b: last seen %v version %d, want its report's %v and 1", b.Reported.LastSeen, b.Reported.Version, now.Add(time.Hour))
	}
	if _, err := s.GetDevice(ctx, "ghost"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("MarkSeen of an unknown id created it: %v", err)
	}
	if evs, _ := s.ListEvents(ctx, "a", 0, 10); len(evs) != 0 {
		t.Errorf("MarkSeen appended events: %+v", evs)
	}
	page, err := s.ListDevices(ctx, store.ListOptions{Limit: 10, Query: store.Query{SeenBefore: now.Add(90 * time.Second)}})
	if err != nil || len(page) != 0 {
		t.Errorf("devices silent since %v: %+v, %v; want none", now.Add(90*time.Second), page, err)
	}
	for _, tt := range []struct {
		before time.Time
		silent uint64
	}{{now.Add(90 * time.Second), 0}, {now.Add(3 * time.Minute), 1}, {now.Add(2 * time.Hour), 2}} {
		sum, err := s.Summary(ctx, tt.before)
		if err != nil {
			t.Fatal(err)
		}
		if sum.Silent != tt.silent || sum.Total != 2 {
			t.Errorf("summary silent before %v: %d of %d, want %d of 2", tt.before, sum.Silent, sum.Total, tt.silent)
		}
	}
	// A report after the mark, with an older LastSeen, keeps the mark.
	if _, err := s.SetReported(ctx, "a", 0, store.Reported{Version: 1, LastSeen: now}, store.Write{}); err != nil {
		t.Fatal(err)
	}
	if sum, _ := s.Summary(ctx, now.Add(90*time.Second)); sum.Silent != 0 {
		t.Errorf("a report with an older LastSeen made a silent: %d", sum.Silent)
	}
}

// TestMinReplicas checks SetMinReplicas against a primary and a replica of
// the test's own: without the replica attached an acknowledged write fails
// as ErrUnavailable, with it every kind of durable write passes, also
// after the server forgot the scripts (NOSCRIPT).
func TestMinReplicas(t *testing.T) {
	ctx := context.Background()
	primaryURL, _ := testredis.Private(t, 0)
	replicaURL, _ := testredis.Private(t, 0)
	popts, _ := goredis.ParseURL(primaryURL)
	ropts, _ := goredis.ParseURL(replicaURL)
	prefix := testredis.Prefix(t)
	s, err := redis.Open(ctx, primaryURL, prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.SetMinReplicas(1, 2*time.Second) // the machine may be busy: a generous timeout
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: "d1"}); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("CreateDevice without a replica = %v, want ErrUnavailable", err)
	}

	primary := goredis.NewClient(popts)
	defer primary.Close()
	if err := primary.ConfigSet(ctx, "repl-diskless-sync-delay", "0").Err(); err != nil {
		t.Fatal(err)
	}
	replica := goredis.NewClient(ropts)
	defer replica.Close()
	host, port, _ := net.SplitHostPort(popts.Addr)
	if err := replica.SlaveOf(ctx, host, port).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool {
		info, _ := primary.Info(ctx, "replication").Result()
		return strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online")
	})
	if err := primary.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: "d1"}); err != nil {
		t.Fatalf("CreateDevice with a replica: %v", err)
	}
	if _, err := s.SetDesired(ctx, "d1", 0, store.Desired{Version: 1}, store.Write{}); err != nil {
		t.Fatalf("SetDesired with a replica: %v", err)
	}
	if _, err := s.SetReported(ctx, "d1", 0, store.Reported{Version: 1}, store.Write{}); err != nil {
		t.Fatalf("SetReported with a replica: %v", err)
	}
	if _, err := s.CreateRollout(ctx, store.Rollout{ID: "r1"}); err != nil {
		t.Fatalf("CreateRollout with a replica: %v", err)
	}
	if err := s.PutExecutions(ctx, "r1", 0, []store.Execution{{DeviceID: "d1"}, {DeviceID: "d2"}}); err != nil {
		t.Fatalf("PutExecutions with a replica: %v", err)
	}
	// What was acknowledged is on the replica.
	if n, _ := replica.Exists(ctx, prefix+redis.BucketTag("d1")+":dev:d1").Result(); n != 1 {
		t.Error("the acknowledged device is not on the replica")
	}

}

func waitFor(t *testing.T, within time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !ok(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", within)
		}
	}
}

// TestClusterMinReplicasWaitsOnTheKeysMaster gives one master of a
// three-master cluster a replica: with SetMinReplicas(1), writes of
// devices whose bucket that master serves succeed and the others fail as
// ErrUnavailable, which shows WAIT runs on the master that took the write.
func TestClusterMinReplicasWaitsOnTheKeysMaster(t *testing.T) {
	ctx := context.Background()
	set := testredis.PrivateCluster(t)
	rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: set.Seeds})
	defer rdb.Close()
	master := goredis.NewClient(&goredis.Options{Addr: set.Seeds[0]})
	defer master.Close()
	masterID, err := master.Do(ctx, "CLUSTER", "MYID").Text()
	if err != nil {
		t.Fatal(err)
	}
	replicaAddr := startClusterNode(t)
	replica := goredis.NewClient(&goredis.Options{Addr: replicaAddr})
	defer replica.Close()
	// The masters' cluster bus ports are their own: MEET names it.
	nodes, err := master.ClusterNodes(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	var bus string
	for _, line := range strings.Split(nodes, "\n") {
		if f := strings.Fields(line); len(f) > 2 && strings.Contains(f[2], "myself") {
			_, bus, _ = strings.Cut(strings.Split(f[1], ",")[0], "@")
		}
	}
	host, port, _ := net.SplitHostPort(set.Seeds[0])
	if err := replica.Do(ctx, "CLUSTER", "MEET", host, port, bus).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() bool {
		return replica.Do(ctx, "CLUSTER", "REPLICATE", masterID).Err() == nil
	})
	waitFor(t, 20*time.Second, func() bool {
		info, _ := master.Info(ctx, "replication").Result()
		return strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online")
	})

	prefix := testredis.Prefix(t)
	s := redis.New(rdb, prefix)
	s.SetMinReplicas(1, 300*time.Millisecond)
	replicated, unreplicated := 0, 0
	for i := range 12 {
		id := fmt.Sprintf("dev-%d", i)
		served, err := rdb.MasterForKey(ctx, prefix+redis.BucketTag(id))
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = s.CreateDevice(ctx, store.Device{ID: id})
		switch onReplicated := served.Options().Addr == set.Seeds[0]; {
		case onReplicated && err != nil:
			t.Errorf("%s (on the replicated master): %v", id, err)
		case onReplicated:
			replicated++
		case !errors.Is(err, store.ErrUnavailable):
			t.Errorf("%s (on a master without replica) = %v, want ErrUnavailable", id, err)
		default:
			unreplicated++
		}
	}
	if replicated == 0 || unreplicated == 0 {
		t.Errorf("%d devices on the replicated master, %d elsewhere: want some of each", replicated, unreplicated)
	}
}

// startClusterNode starts an empty cluster-enabled redis-server for the
// rest of the test and returns its address.
func startClusterNode(t *testing.T) string {
	t.Helper()
	port, err := testredis.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	bus, err := testredis.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--cluster-port", strconv.Itoa(bus),
		"--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
		"--logfile", filepath.Join(dir, "redis.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitFor(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}
