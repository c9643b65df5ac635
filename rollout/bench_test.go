package rollout

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/redis"
)

// benchFleet is a Redis store with n devices labeled ring=bench, and a
// controller that leads.
func benchFleet(b *testing.B, n int) (*redis.Store, *Controller) {
	b.Helper()
	db, err := redis.Open(context.Background(), testredis.URL(b), testredis.Prefix(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	quiet := slog.New(slog.DiscardHandler)
	rep := replica.New(replica.Config{Devices: db, Changes: db, Logger: quiet})
	ctx := b.Context()
	for i := range n {
		if _, err := rep.Register(ctx, fmt.Sprintf("dev-%05d", i), map[string]string{"ring": "bench"}); err != nil {
			b.Fatal(err)
		}
	}
	c := NewController(ControllerConfig{Rollouts: db, Leases: db, Replica: rep, Holder: "bench", Logger: quiet, LeaseTTL: time.Hour})
	c.renew(ctx)
	if !c.Leading() {
		b.Fatal("the controller does not lead")
	}
	return db, c
}

func benchSpec() store.RolloutSpec {
	return store.RolloutSpec{
		Bundle: store.Bundle{TargetPath: "fw/2.0.0.bin", Length: 1024, SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"},
		Labels: map[string]string{"ring": "bench"},
		Waves:  []store.WaveSpec{{Percent: 1}, {Percent: 10}, {Percent: 100}},
	}
}

// BenchmarkRolloutStart measures starting a rollout of 10,000 devices on
// Redis: listing the target set, splitting it into waves, and writing an
// execution per device.
func BenchmarkRolloutStart(b *testing.B) {
	const n = 10000
	db, c := benchFleet(b, n)
	svc := New(Config{Rollouts: db, Logger: slog.New(slog.DiscardHandler)})
	spec := benchSpec()
	spec.StartAt = time.Now().Add(time.Hour) // started below, by the clock
	ctx := b.Context()
	for b.Loop() {
		r, err := svc.Create(ctx, spec, "bench")
		if err != nil {
			b.Fatal(err)
		}
		cur, _ := db.GetRollout(ctx, r.ID)
		rn, err := c.load(ctx, cur)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.start(ctx, &cur, rn, cur, time.Now()); err != nil {
			b.Fatal(err)
		}
		if got := len(rn.execs); got != n {
			b.Fatalf("%d executions, want %d", got, n)
		}
		delete(c.runs, r.ID)
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/n, "µs/device")
}

// BenchmarkRolloutTick measures a controller tick over a running rollout
// of 10,000 devices when nothing changed: the cost the controller pays
// every second for an idle rollout of that size.
func BenchmarkRolloutTick(b *testing.B) {
	const n = 10000
	db, c := benchFleet(b, n)
	svc := New(Config{Rollouts: db, Logger: slog.New(slog.DiscardHandler)})
	spec := benchSpec()
	spec.MaxInFlight = 1 // one device at work, the rest pending
	ctx := b.Context()
	r, err := svc.Create(ctx, spec, "bench")
	if err != nil {
		b.Fatal(err)
	}
	c.cfg.Resync = time.Hour
	for range 2 { // start, then give the first device the job
		if err := c.reconcileAll(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if got := c.runs[r.ID]; got == nil || len(got.execs) != n {
		b.Fatal("the rollout did not start")
	}
	for b.Loop() {
		if err := c.reconcileAll(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
