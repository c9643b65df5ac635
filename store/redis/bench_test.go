package redis_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
)

// fleet is a set of devices created for a benchmark, handed out in groups
// of per to the parallel workers, each of which keeps its devices'
// reported versions.
type fleet struct {
	s     *redis.Store
	ids   []string
	per   int
	taken atomic.Int64
}

const benchWorkers = 64 // more than RunParallel starts on this machine

func newFleet(b *testing.B, s *redis.Store, per int) *fleet {
	ctx := context.Background()
	f := &fleet{s: s, per: per}
	now := testclock.Now()
	for i := range benchWorkers * per {
		id := fmt.Sprintf("gw-%05d", i)
		if _, _, err := s.CreateDevice(ctx, store.Device{ID: id, Labels: map[string]string{"model": "gw2"}, CreatedAt: now}); err != nil {
			b.Fatal(err)
		}
		f.ids = append(f.ids, id)
	}
	return f
}

// worker returns a worker's devices and their reported versions.
func (f *fleet) worker() ([]string, []uint64) {
	k := int(f.taken.Add(1)-1) % benchWorkers
	return f.ids[k*f.per : (k+1)*f.per], make([]uint64, f.per)
}

// report is SetReported with an event and an attestation, as a device's
// signed job result is stored.
func report(ctx context.Context, s *redis.Store, id string, version uint64, now time.Time) error {
	r := store.Reported{Version: version + 1, DesiredVersion: 1, Bundle: store.Bundle{TargetPath: "fw-2.bin", Length: 1 << 20, SHA256: "ab12"},
		AgentVersion: "ferry-agent/bench", ReportedAt: now, LastSeen: now,
		Job: store.Job{ID: "job-1", DesiredVersion: 1, Status: "SUCCEEDED", UpdatedAt: now}}
	w := store.Write{Event: store.Event{Time: now, Kind: "job_ended", JobID: "job-1", Status: "SUCCEEDED"},
		Attestation: &store.Attestation{JobID: fmt.Sprintf("job-%d", version), Envelope: make([]byte, 600), CertificateChain: [][]byte{make([]byte, 500)}}}
	_, err := s.SetReported(ctx, id, version, r, w)
	return err
}

// BenchmarkIngest measures report ingest (SetReported with an event and an
// attestation, many devices in parallel) on a single server and on the
// three-master cluster, in the same run.
func BenchmarkIngest(b *testing.B) {
	for _, target := range []string{"single", "cluster"} {
		b.Run(target, func(b *testing.B) {
			s := benchStore(b, target)
			f := newFleet(b, s, 16)
			ctx := context.Background()
			now := testclock.Now()
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ids, versions := f.worker()
				for i := 0; pb.Next(); i++ {
					j := i % len(ids)
					if err := report(ctx, s, ids[j], versions[j], now); err != nil {
						b.Error(err)
						return
					}
					versions[j]++
				}
			})
		})
	}
}

func benchStore(b *testing.B, target string) *redis.Store {
	prefix := testredis.Prefix(b)
	if target == "cluster" {
		rdb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: testredis.Cluster(b), PoolSize: 64})
		b.Cleanup(func() { rdb.Close() })
		return redis.New(rdb, prefix)
	}
	opts, err := goredis.ParseURL(testredis.URL(b))
	if err != nil {
		b.Fatal(err)
	}
	opts.PoolSize = 64
	rdb := goredis.NewClient(opts)
	b.Cleanup(func() { rdb.Close() })
	return redis.New(rdb, prefix)
}

// BenchmarkBalance runs reports, heartbeat batches and listings together
// on the three-master cluster and reports how evenly the masters worked:
// each master's command time (INFO commandstats, usec summed over every
// command) and max/mean of the three, with the server time per operation
// that the sizing in docs/operations.md derives from.
func BenchmarkBalance(b *testing.B) {
	ctx := context.Background()
	seeds := testredis.Cluster(b)
	s := benchStore(b, "cluster")
	f := newFleet(b, s, 32)
	masters := make([]*goredis.Client, len(seeds))
	for i, a := range seeds {
		masters[i] = goredis.NewClient(&goredis.Options{Addr: a})
		defer masters[i].Close()
	}
	for _, m := range masters {
		if err := m.ConfigResetStat(ctx).Err(); err != nil {
			b.Fatal(err)
		}
	}
	now := testclock.Now()
	var reports, beats, lists atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ids, versions := f.worker()
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
		for i := 0; pb.Next(); i++ {
			switch {
			case i%50 == 49: // an operator's listing page
				after := f.ids[rng.IntN(len(f.ids))]
				if _, err := s.ListDevices(ctx, store.ListOptions{After: after, Limit: 100}); err != nil {
					b.Error(err)
					return
				}
				lists.Add(1)
			case i%10 == 9: // a heartbeat batch of 100 devices
				seen := make([]store.Seen, 100)
				for k := range seen {
					seen[k] = store.Seen{ID: f.ids[rng.IntN(len(f.ids))], At: now.Add(time.Duration(i) * time.Millisecond)}
				}
				if err := s.MarkSeen(ctx, seen); err != nil {
					b.Error(err)
					return
				}
				beats.Add(100)
			default:
				j := i % len(ids)
				if err := report(ctx, s, ids[j], versions[j], now); err != nil {
					b.Error(err)
					return
				}
				versions[j]++
				reports.Add(1)
			}
		}
	})
	b.StopTimer()
	usec := make([]float64, len(masters))
	var sum, most, sumAll, mostAll float64
	for i, m := range masters {
		info, err := m.Info(ctx, "commandstats").Result()
		if err != nil {
			b.Fatal(err)
		}
		usec[i] = commandUsec(info, false)
		sum += usec[i]
		most = max(most, usec[i])
		all := commandUsec(info, true)
		sumAll += all
		mostAll = max(mostAll, all)
	}
	if sum == 0 {
		b.Fatal("no command time recorded")
	}
	// The store's own commands, and everything with the change notices'
	// PUBLISH (which go to the one master of the channel's slot).
	b.ReportMetric(most/(sum/float64(len(usec))), "max/mean")
	b.ReportMetric(mostAll/(sumAll/float64(len(usec))), "max/mean-with-publish")
	for i, u := range usec {
		b.ReportMetric(u/1e3, fmt.Sprintf("master%d-ms", i))
	}
	b.ReportMetric(float64(reports.Load()), "reports")
	b.ReportMetric(float64(beats.Load()), "heartbeats")
	b.ReportMetric(float64(lists.Load()), "listings")
}

// commandUsec sums usec= over the lines of INFO commandstats, those of
// PUBLISH and SPUBLISH only withPublish.
func commandUsec(info string, withPublish bool) float64 {
	var total float64
	for _, line := range strings.Split(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_") {
			continue
		}
		if !withPublish && (strings.HasPrefix(line, "cmdstat_publish:") || strings.HasPrefix(line, "cmdstat_spublish:")) {
			continue
		}
		for _, f := range strings.Split(line[strings.Index(line, ":")+1:], ",") {
			if v, ok := strings.CutPrefix(f, "usec="); ok {
				n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				total += n
			}
		}
	}
	return total
}

// BenchmarkServerCPU measures the Redis server's CPU time (INFO cpu, user
// plus system) per store operation on a server of its own: what the sizing
// table in docs/operations.md derives from. A heartbeat is one device of a
// MarkSeen batch of 500; a listing is a page of 100 devices.
func BenchmarkServerCPU(b *testing.B) {
	ctx := context.Background()
	url, _ := testredis.Private(b, 0)
	opts, _ := goredis.ParseURL(url)
	opts.PoolSize = 64
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	s := redis.New(rdb, testredis.Prefix(b))
	f := newFleet(b, s, 32)
	now := testclock.Now()
	const batch = 500
	ops := []struct {
		name string
		per  int // devices per call
		run  func(i int, ids []string, versions []uint64) error
	}{
		{"Report", 1, func(i int, ids []string, versions []uint64) error {
			j := i % len(ids)
			versions[j]++
			return report(ctx, s, ids[j], versions[j]-1, now)
		}},
		{"Heartbeat", batch, func(i int, _ []string, _ []uint64) error {
			seen := make([]store.Seen, batch)
			for k := range seen {
				seen[k] = store.Seen{ID: f.ids[(i*batch+k)%len(f.ids)], At: now.Add(time.Duration(i) * time.Millisecond)}
			}
			return s.MarkSeen(ctx, seen)
		}},
		{"ListPage", 1, func(i int, _ []string, _ []uint64) error {
			_, err := s.ListDevices(ctx, store.ListOptions{After: f.ids[(i*97)%len(f.ids)], Limit: 100})
			return err
		}},
		{"Summary", 1, func(int, []string, []uint64) error {
			_, err := s.Summary(ctx, now)
			return err
		}},
	}
	for _, op := range ops {
		b.Run(op.name, func(b *testing.B) {
			before := serverCPU(b, rdb)
			var calls atomic.Int64
			b.SetParallelism(8)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ids, versions := f.worker()
				for i := 0; pb.Next(); i++ {
					if err := op.run(int(calls.Add(1)), ids, versions); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			used := serverCPU(b, rdb) - before
			b.ReportMetric(used.Seconds()*1e6/float64(calls.Load()*int64(op.per)), "server-cpu-us/op")
		})
	}
}

// serverCPU is the server's used_cpu_sys plus used_cpu_user.
func serverCPU(b *testing.B, rdb *goredis.Client) time.Duration {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_sys" || k == "used_cpu_user" {
			n, _ := strconv.ParseFloat(v, 64)
			total += n
		}
	}
	return time.Duration(total * float64(time.Second))
}
