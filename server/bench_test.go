package server_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/internal/testredis"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
)

// BenchmarkSignedReportIngest measures what ferryd does with each signed
// report, on the Redis store: DSSE signature verification with the key of
// the stream's already verified certificate, then the replica's read and
// write script (report, history event, envelope, indexes and counters in
// one step), from 128 devices reporting at once ("ingest"). Setting each
// device's next desired state and signing its report (the device's work)
// are outside the timer. Beside it, in the same run, the two floors:
// "verify-only", the signature checks of the same reports on the same
// workers (the ceiling of ingest on these cores), and "trivial-script",
// one EVALSHA of "return 1" per report, each its own round trip, from the
// same workers.
func BenchmarkSignedReportIngest(b *testing.B) {
	ctx := context.Background()
	const devices, workers = 512, 128
	db, err := redis.Open(ctx, testredis.URL(b), testredis.Prefix(b))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	rep := replica.New(replica.Config{Devices: db, Logger: slog.New(slog.DiscardHandler)})
	now := time.Now()
	ca, err := credentials.NewCA("bench CA", time.Hour, now)
	if err != nil {
		b.Fatal(err)
	}
	type device struct {
		id    string
		key   crypto.Signer
		chain [][]byte
		leaf  *x509.Certificate
	}
	devs := make([]device, devices)
	for i := range devs {
		id := fmt.Sprintf("bench-%03d", i)
		key, _ := credentials.NewKey()
		cert, err := ca.IssueDevice("ferry.test", id, key.Public(), time.Hour, now)
		if err != nil {
			b.Fatal(err)
		}
		devs[i] = device{id: id, key: key, chain: [][]byte{cert.Raw}, leaf: cert}
		if _, err := rep.Register(ctx, id, nil); err != nil {
			b.Fatal(err)
		}
	}
	doc := replica.Document{Bundle: store.Bundle{TargetPath: "gw/fw.bin", Length: 1, SHA256: sum}}
	parallel := func(n int, fn func(i int)) {
		var wg sync.WaitGroup
		next := make(chan int)
		for range workers {
			wg.Go(func() {
				for i := range next {
					fn(i)
				}
			})
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
	}
	envelopes := make([][]byte, devices)
	// sign gives every device a new desired state and signs its report.
	sign := func(b *testing.B, batch int) {
		parallel(batch, func(i int) {
			d, err := rep.SetDesired(ctx, devs[i].id, doc, "bench", nil)
			if err != nil {
				b.Error(err)
				return
			}
			st := attest.NewStatement(attest.Report{Device: devs[i].id, JobID: d.Desired.JobID, DesiredVersion: d.Desired.Version,
				Status: "SUCCEEDED", Time: now, Nonce: "n", Bundle: &attest.Bundle{TargetPath: "gw/fw.bin", Length: 1, SHA256: sum}})
			if envelopes[i], err = attest.Sign(devs[i].key, st); err != nil {
				b.Error(err)
			}
		})
	}
	b.Run("verify-only", func(b *testing.B) {
		sign(b, devices)
		b.ResetTimer()
		parallel(b.N, func(i int) {
			if _, err := attest.VerifyByDevice(envelopes[i%devices], devs[i%devices].leaf, "ferry.test"); err != nil {
				b.Error(err)
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
	})
	b.Run("trivial-script", func(b *testing.B) {
		opts, err := goredis.ParseURL(testredis.URL(b))
		if err != nil {
			b.Fatal(err)
		}
		opts.PoolSize = workers
		rdb := goredis.NewClient(opts)
		defer rdb.Close()
		script := goredis.NewScript("return 1")
		if err := script.Load(ctx, rdb).Err(); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		parallel(b.N, func(i int) {
			if err := script.EvalSha(ctx, rdb, []string{"k"}).Err(); err != nil {
				b.Error(err)
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "scripts/s")
	})
	b.Run("ingest", func(b *testing.B) {
		for done := 0; done < b.N; {
			batch := min(devices, b.N-done)
			b.StopTimer()
			sign(b, batch)
			b.StartTimer()
			parallel(batch, func(i int) {
				st, err := attest.VerifyByDevice(envelopes[i], devs[i].leaf, "ferry.test")
				if err != nil {
					b.Error(err)
					return
				}
				p := st.Predicate
				out, err := rep.Report(ctx, devs[i].id, replica.Report{JobID: p.JobID, DesiredVersion: p.DesiredVersion,
					Status: replica.JobStatus(p.Status), State: replica.State{Bundle: store.Bundle{TargetPath: p.Bundle.TargetPath, Length: p.Bundle.Length, SHA256: p.Bundle.SHA256}},
					Signed: &replica.Signed{Envelope: envelopes[i], CertificateChain: devs[i].chain}})
				if err != nil || !out.Accepted {
					b.Errorf("report: %+v, %v", out, err)
				}
			})
			done += batch
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
	})
}

// BenchmarkDeltaLatency measures SetDesiredState (Connect, HTTPS) until the
// Delta arrives on the device's stream, with 1,000 devices connected to a
// ferryd on the Redis store, one change at a time; it reports the median
// and the 99th percentile.
func BenchmarkDeltaLatency(b *testing.B) {
	const connected = 1000
	ids := make([]string, connected)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%04d", i)
	}
	f := ferrytest.Start(b, ferrytest.Redis, func(cfg *server.Config) {
		cfg.Dev.Devices = ids
		cfg.Device.MaxConnsPerSource = 0 // every simulated device connects from loopback
	})
	f.Publish(b, "gw/fw.bin")
	devs := make([]*ferrytest.Device, connected)
	for i, id := range ids {
		devs[i] = f.OpenDevice(b, id, &devicev1.Hello{})
	}
	fleet := f.Fleet(b)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		d := devs[i%connected]
		start := time.Now()
		if _, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
			DeviceId: d.ID, Document: &devicev1.DesiredDocument{Bundle: bundle("gw/fw.bin")},
		})); err != nil {
			b.Fatal(err)
		}
		if d.Recv().GetDelta() == nil {
			b.Fatal("no delta")
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkSelectorFanout measures one SetDesiredState on a selector that
// matches every connected device (FERRY_BENCH_FANOUT of them, 1,000 by
// default), on the Redis store: how long the call takes to return
// ("call-ms") and when the last and the 99th percentile of the devices'
// Deltas arrive after the call began. Beside it, the floor in the same
// run: a Redis PING plus one Connect round trip (GetDevice), its p99.
func BenchmarkSelectorFanout(b *testing.B) {
	connected := 1000
	if v := os.Getenv("FERRY_BENCH_FANOUT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		connected = n
	}
	ids := make([]string, connected)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%05d", i)
	}
	f := ferrytest.Start(b, ferrytest.Redis, func(cfg *server.Config) {
		cfg.Dev.Devices = ids
		cfg.Device.MaxConnsPerSource = 0 // every simulated device connects from loopback
	})
	f.Publish(b, "gw/fw.bin")
	devs := make([]*ferrytest.Device, connected)
	for i, id := range ids {
		devs[i] = f.OpenDevice(b, id, &devicev1.Hello{})
	}
	fleet := f.Fleet(b)
	ctx := context.Background()

	opts, err := goredis.ParseURL(testredis.URL(b))
	if err != nil {
		b.Fatal(err)
	}
	rdb := goredis.NewClient(opts)
	defer rdb.Close()
	floor := make([]time.Duration, 200)
	for i := range floor {
		start := time.Now()
		if err := rdb.Ping(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		if _, err := fleet.GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: ids[i%connected]})); err != nil {
			b.Fatal(err)
		}
		floor[i] = time.Since(start)
	}
	slices.Sort(floor)

	var calls, p99s, lasts []time.Duration
	b.ResetTimer()
	for range b.N {
		arrived := make([]time.Duration, connected)
		var wg sync.WaitGroup
		start := time.Now()
		for i, d := range devs {
			wg.Go(func() {
				for d.Recv().GetDelta() == nil {
				}
				arrived[i] = time.Since(start)
			})
		}
		resp, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
			Selector: "group=dev", Document: &devicev1.DesiredDocument{Bundle: bundle("gw/fw.bin")},
		}))
		if err != nil {
			b.Fatal(err)
		}
		calls = append(calls, time.Since(start))
		if n := resp.Msg.GetDevicesUpdated(); n != uint64(connected) {
			b.Fatalf("selector updated %d devices, want %d", n, connected)
		}
		wg.Wait()
		slices.Sort(arrived)
		p99s = append(p99s, arrived[connected*99/100])
		lasts = append(lasts, arrived[connected-1])
	}
	b.StopTimer()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(slices.Max(calls)), "call-ms")
	b.ReportMetric(ms(slices.Max(p99s)), "p99-delta-ms")
	b.ReportMetric(ms(slices.Max(lasts)), "last-delta-ms")
	b.ReportMetric(ms(floor[len(floor)*99/100]), "floor-p99-ms")
}
