package redis_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
)

// servers are the Redis deployments the notice tests run on: one server,
// and a three-master cluster (sharded pub/sub routes each instance's
// channel to the master of its slot). The clients' connections carry
// clientName, when given.
func servers(t testing.TB, clientName ...string) map[string]func() goredis.UniversalClient {
	var cname string
	if len(clientName) > 0 {
		cname = clientName[0]
	}
	url := testredis.URL(t)
	seeds := testredis.Cluster(t)
	return map[string]func() goredis.UniversalClient{
		"single": func() goredis.UniversalClient {
			opts, err := goredis.ParseURL(url)
			if err != nil {
				t.Fatal(err)
			}
			opts.ClientName = cname
			return goredis.NewClient(opts)
		},
		"cluster": func() goredis.UniversalClient {
			return goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: seeds, ClientName: cname})
		},
	}
}

// instance is one ferryd's store, counting the notices it receives.
type instance struct {
	*redis.Store
	name string
	mu   sync.Mutex
	got  map[string]int
	seen chan string
}

func (in *instance) count(id string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.got[id]
}

func (in *instance) total() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := 0
	for id, c := range in.got {
		if id != store.AllChanged && id[0] != '~' { // markers
			n += c
		}
	}
	return n
}

// fleet is a set of instances on one Redis, each subscribed to its notices.
type noticeFleet struct {
	t         testing.TB
	ctx       context.Context
	instances []*instance
	writer    *redis.Store
	prefix    string
}

func newNoticeFleet(t testing.TB, client func() goredis.UniversalClient, n int) *noticeFleet {
	ctx, cancel := context.WithCancel(context.Background())
	prefix := testredis.Prefix(t)
	open := func(name string) *redis.Store {
		rdb := client()
		s := redis.New(rdb, prefix)
		s.SetClock(testclock.Now)
		s.SetInstance(name)
		s.SetWatchRefresh(50 * time.Millisecond)
		t.Cleanup(func() { rdb.Close() })
		return s
	}
	f := &noticeFleet{t: t, ctx: ctx, writer: open("writer"), prefix: prefix}
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range n {
		in := &instance{name: fmt.Sprintf("ferryd-%c", 'a'+i), got: map[string]int{}, seen: make(chan string, 1<<16)}
		in.Store = open(in.name)
		f.instances = append(f.instances, in)
		wg.Go(func() {
			in.SubscribeChanges(ctx, func(id string) {
				in.mu.Lock()
				in.got[id]++
				in.mu.Unlock()
				in.seen <- id
			})
		})
		// The subscription is in place once a notice to a held marker
		// comes through.
		marker := "~" + in.name
		if err := in.Hold(ctx, marker); err != nil {
			t.Fatal(err)
		}
		f.waitMarker(in)
	}
	return f
}

// waitMarker publishes in's marker until in hears it: every notice sent
// to in before has then been received (one channel, in order).
func (f *noticeFleet) waitMarker(in *instance) {
	f.t.Helper()
	marker := "~" + in.name
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := f.writer.PublishChange(f.ctx, marker); err != nil {
			f.t.Fatal(err)
		}
		wait := time.After(100 * time.Millisecond)
	read:
		for {
			select {
			case id := <-in.seen:
				if id == marker {
					return
				}
			case <-wait:
				break read
			}
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("%s heard no notice within 10 s", in.name)
		}
	}
}

// settle waits until every notice sent so far has been received.
func (f *noticeFleet) settle() {
	f.t.Helper()
	redis.WaitNotices(f.writer)
	for _, in := range f.instances {
		redis.WaitNotices(in.Store)
		f.waitMarker(in)
	}
}

// create makes devices through the writer (nobody holds them yet).
func (f *noticeFleet) create(ids ...string) {
	f.t.Helper()
	for _, id := range ids {
		if _, _, err := f.writer.CreateDevice(f.ctx, store.Device{ID: id}); err != nil {
			f.t.Fatal(err)
		}
	}
	f.settle()
}

func (f *noticeFleet) write(s *redis.Store, id string) {
	f.t.Helper()
	d, err := s.GetDevice(f.ctx, id)
	if err != nil {
		f.t.Fatal(err)
	}
	next := store.Desired{Version: d.Desired.Version + 1, JobID: fmt.Sprintf("job-%d", d.Desired.Version+1)}
	if _, err := s.SetDesired(f.ctx, id, d.Desired.Version, next, store.Write{}); err != nil {
		f.t.Fatal(err)
	}
}

// want checks how many notices of id each instance received.
func (f *noticeFleet) want(step, id string, counts ...int) {
	f.t.Helper()
	for i, in := range f.instances {
		if got := in.count(id); got != counts[i] {
			f.t.Errorf("%s: %s received %d notices of %s, want %d", step, in.name, got, id, counts[i])
		}
	}
}

// TestNoticesAreDirected: with three instances on one Redis, a change of
// a device held by B is received by B only; a fan-out over devices held by
// all three reaches each holder once per device; a stale holder (an
// instance killed without releasing) is overwritten by the next instance
// that holds the device, and its late release changes nothing.
func TestNoticesAreDirected(t *testing.T) {
	for name, client := range servers(t) {
		t.Run(name, func(t *testing.T) {
			f := newNoticeFleet(t, client, 3)
			a, b, c := f.instances[0], f.instances[1], f.instances[2]
			ctx := f.ctx

			f.create("dev-b")
			if err := b.Hold(ctx, "dev-b"); err != nil {
				t.Fatal(err)
			}
			f.write(a.Store, "dev-b") // written through A, held by B
			f.write(c.Store, "dev-b") // and through C
			f.settle()
			f.want("a device held by B", "dev-b", 0, 2, 0)

			// Fan-out: 30 devices, ten held by each instance, written one
			// by one (a selector) and announced in one batch.
			var ids []string
			for i := range 30 {
				ids = append(ids, fmt.Sprintf("fan-%02d", i))
			}
			f.create(ids...)
			for i, id := range ids {
				if err := f.instances[i%3].Hold(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			for _, id := range ids {
				f.write(f.writer, id)
			}
			f.settle()
			if err := f.writer.PublishChange(ctx, ids...); err != nil {
				t.Fatal(err)
			}
			f.settle()
			for i, id := range ids {
				counts := []int{0, 0, 0}
				counts[i%3] = 2 // the write and the batch announcement
				f.want("fan-out", id, counts...)
			}

			// Stale holder: D holds dev-s and dies without releasing.
			f.create("dev-s")
			// D is an instance on the fleet's prefix with no subscription.
			d := fleetStore(t, f, client, "ferryd-killed")
			if err := d.Hold(ctx, "dev-s"); err != nil {
				t.Fatal(err)
			}
			f.write(f.writer, "dev-s") // lost: nobody listens to D
			f.settle()
			f.want("held by a dead instance", "dev-s", 0, 0, 0)
			if err := c.Hold(ctx, "dev-s"); err != nil { // the device reconnects to C
				t.Fatal(err)
			}
			if err := d.Release(ctx, "dev-s"); err != nil { // a late release by D
				t.Fatal(err)
			}
			f.write(f.writer, "dev-s")
			f.settle()
			f.want("taken over by C", "dev-s", 0, 0, 1)
			if err := c.Release(ctx, "dev-s"); err != nil {
				t.Fatal(err)
			}
			f.write(f.writer, "dev-s")
			f.settle()
			f.want("released by C", "dev-s", 0, 0, 1)
		})
	}
}

// fleetStore opens another instance on f's prefix, without subscribing.
func fleetStore(t *testing.T, f *noticeFleet, client func() goredis.UniversalClient, name string) *redis.Store {
	rdb := client()
	t.Cleanup(func() { rdb.Close() })
	s := redis.New(rdb, f.prefix)
	s.SetInstance(name)
	return s
}

// TestNoticesToWatchers: while an instance watches the fleet, it receives
// every change, whoever holds the device and whoever writes it; writers
// stop publishing for watchers once the last watch ends.
func TestNoticesToWatchers(t *testing.T) {
	for name, client := range servers(t) {
		t.Run(name, func(t *testing.T) {
			f := newNoticeFleet(t, client, 3)
			a, b, c := f.instances[0], f.instances[1], f.instances[2]
			ctx := f.ctx
			f.create("dev-1", "dev-2")
			if err := b.Hold(ctx, "dev-1"); err != nil {
				t.Fatal(err)
			}
			if redis.Watched(ctx, c.Store) {
				t.Fatal("writers publish for watchers before anyone watches")
			}
			stop, err := a.WatchAll(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// C notices the watcher within its refresh interval.
			for deadline := time.Now().Add(10 * time.Second); !redis.Watched(ctx, c.Store); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("C did not notice A's watch")
				}
			}
			f.write(c.Store, "dev-1") // held by B
			f.write(c.Store, "dev-2") // held by nobody
			f.settle()
			f.want("watched, held by B", "dev-1", 1, 1, 0)
			f.want("watched, held by nobody", "dev-2", 1, 0, 0)
			stop()
			for deadline := time.Now().Add(10 * time.Second); redis.Watched(ctx, c.Store); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("C still publishes for watchers after the watch ended")
				}
			}
			f.write(c.Store, "dev-1")
			f.write(c.Store, "dev-2")
			f.settle()
			f.want("no longer watched", "dev-1", 1, 2, 0)
			f.want("no longer watched", "dev-2", 1, 0, 0)
		})
	}
}

// BenchmarkNoticesPerChange writes device documents held evenly by 1, 2
// and 3 instances and reports the notices received per change: in all
// (notices/change: 1 when directed, the instance count when broadcast)
// and by the busiest instance per change of a device it holds
// (notices/held-change).
func BenchmarkNoticesPerChange(b *testing.B) {
	for name, client := range servers(b) {
		for n := 1; n <= 3; n++ {
			b.Run(fmt.Sprintf("%s/instances=%d", name, n), func(b *testing.B) {
				f := newNoticeFleet(b, client, n)
				const devices = 300
				ids := make([]string, devices)
				held := make([]int, n) // changes of devices each instance holds
				for i := range ids {
					ids[i] = fmt.Sprintf("dev-%03d", i)
				}
				f.create(ids...)
				for i, id := range ids {
					if err := f.instances[i%n].Hold(f.ctx, id); err != nil {
						b.Fatal(err)
					}
				}
				versions := make([]uint64, devices)
				b.ResetTimer()
				for i := range b.N {
					d := i % devices
					next := store.Desired{Version: versions[d] + 1, JobID: fmt.Sprintf("job-%d", i)}
					if _, err := f.writer.SetDesired(f.ctx, ids[d], versions[d], next, store.Write{}); err != nil {
						b.Fatal(err)
					}
					versions[d]++
					held[d%n]++
				}
				b.StopTimer()
				f.settle()
				received, worst := 0, 0.0
				for i, in := range f.instances {
					received += in.total()
					if held[i] > 0 {
						worst = max(worst, float64(in.total())/float64(held[i]))
					}
				}
				b.ReportMetric(float64(received)/float64(b.N), "notices/change")
				b.ReportMetric(worst, "notices/held-change")
			})
		}
	}
}

// TestNoticesLostAfterABreak: when Redis drops an instance's subscription,
// go-redis subscribes again, and the instance is told that every device it
// holds may have changed (the notices published in between are lost), so
// its streams read their devices once; notices flow again afterwards.
func TestNoticesLostAfterABreak(t *testing.T) {
	// The instance's connections carry a name of their own, so that only its
	// subscription is broken, not those of other tests on the same servers.
	cname := fmt.Sprintf("ferry-break-%d", time.Now().UnixNano())
	for name, client := range servers(t, cname) {
		t.Run(name, func(t *testing.T) {
			f := newNoticeFleet(t, client, 1)
			in, ctx := f.instances[0], f.ctx
			if got := in.count(store.AllChanged); got != 1 {
				t.Fatalf("%d AllChanged once subscribed, want 1", got)
			}
			killer := client()
			defer killer.Close()
			killed := 0
			kill := func(ctx context.Context, c *goredis.Client) error {
				list, err := c.ClientList(ctx).Result()
				if err != nil {
					return err
				}
				for _, line := range strings.Split(list, "\n") {
					fields := map[string]string{}
					for _, kv := range strings.Fields(line) {
						k, v, _ := strings.Cut(kv, "=")
						fields[k] = v
					}
					if fields["name"] == cname && fields["ssub"] != "" && fields["ssub"] != "0" {
						id, err := strconv.ParseInt(fields["id"], 10, 64)
						if err != nil {
							return err
						}
						if err := c.ClientKillByFilter(ctx, "ID", strconv.FormatInt(id, 10)).Err(); err != nil {
							return err
						}
						killed++
					}
				}
				return nil
			}
			switch c := killer.(type) {
			case *goredis.ClusterClient:
				if err := c.ForEachMaster(ctx, kill); err != nil {
					t.Fatal(err)
				}
			case *goredis.Client:
				if err := kill(ctx, c); err != nil {
					t.Fatal(err)
				}
			}
			if killed != 1 {
				t.Fatalf("broke %d subscriptions, want the instance's one", killed)
			}
			deadline := time.After(15 * time.Second)
			for in.count(store.AllChanged) < 2 {
				select {
				case <-in.seen:
				case <-deadline:
					t.Fatal("no AllChanged within 15 s of the subscription's break")
				}
			}
			f.create("dev-after")
			if err := in.Hold(ctx, "dev-after"); err != nil {
				t.Fatal(err)
			}
			f.write(f.writer, "dev-after")
			f.settle()
			f.want("after the break", "dev-after", 1)
		})
	}
}
