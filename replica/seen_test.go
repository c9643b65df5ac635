package replica_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
)

// countingStore counts the calls the replica makes to a real store.
type countingStore struct {
	store.Devices
	markSeen, marked, setReported atomic.Int64
}

func (c *countingStore) MarkSeen(ctx context.Context, seen []store.Seen) error {
	c.markSeen.Add(1)
	c.marked.Add(int64(len(seen)))
	return c.Devices.MarkSeen(ctx, seen)
}

func (c *countingStore) SetReported(ctx context.Context, id string, expect uint64, r store.Reported, w store.Write) (store.Device, error) {
	c.setReported.Add(1)
	return c.Devices.SetReported(ctx, id, expect, r, w)
}

// stepClock is a test clock that moves a millisecond on every reading.
type stepClock struct {
	base time.Time
	n    atomic.Int64
}

func (c *stepClock) Now() time.Time { return c.base.Add(time.Duration(c.n.Add(1)) * time.Millisecond) }

func newCounted(t *testing.T, flush time.Duration) (*replica.Service, *countingStore, *stepClock) {
	t.Helper()
	s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cs := &countingStore{Devices: s}
	clock := &stepClock{base: testclock.Start().Truncate(time.Second)}
	r := replica.New(replica.Config{Devices: cs, Logger: slog.New(slog.DiscardHandler), Now: clock.Now, SeenFlush: flush})
	return r, cs, clock
}

// TestSeenIsBatched: the heartbeats of many devices, each answering pings
// many times, are written in one MarkSeen per flush interval, whatever the
// number of devices, and never as document writes; the latest time of
// each device lands, and none of them counts as silent.
func TestSeenIsBatched(t *testing.T) {
	const (
		devices = 1000
		rounds  = 20
		flush   = 100 * time.Millisecond
	)
	r, cs, clock := newCounted(t, flush)
	ctx := context.Background()
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%04d", i)
		if _, err := r.Register(ctx, ids[i], nil); err != nil {
			t.Fatal(err)
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- r.Run(runCtx) }()

	start := time.Now()
	var lastRound time.Time // every device's last ping is after this
	for round := range rounds {
		if round == rounds-1 {
			lastRound = clock.Now()
		}
		var wg sync.WaitGroup
		for w := range 4 { // four streams' worth of goroutines
			wg.Go(func() {
				for i := w; i < devices; i += 4 {
					if err := r.Seen(ctx, ids[i]); err != nil {
						t.Error(err)
					}
				}
			})
		}
		wg.Wait()
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)

	// At most one flush per interval, plus the one at shutdown.
	limit := int64(elapsed/flush) + 2
	if n := cs.markSeen.Load(); n < 1 || n > limit {
		t.Errorf("%d devices × %d pings over %v took %d MarkSeen calls, want 1 to %d", devices, rounds, elapsed, n, limit)
	}
	if n := cs.marked.Load(); n > int64(devices)*cs.markSeen.Load() {
		t.Errorf("%d last-seen entries written in %d calls: more than one per device per call", n, cs.markSeen.Load())
	}
	if n := cs.setReported.Load(); n != 0 {
		t.Errorf("heartbeats wrote %d reported documents, want none", n)
	}
	sum, err := r.Summary(ctx, lastRound)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Silent != 0 {
		t.Errorf("%d devices silent since the last round of pings, want 0", sum.Silent)
	}
	for _, id := range []string{ids[0], ids[devices/2], ids[devices-1]} {
		d, err := r.GetDevice(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !d.Reported.LastSeen.After(lastRound) || d.Reported.Version != 0 {
			t.Errorf("%s: last seen %v (version %d), want after %v at version 0", id, d.Reported.LastSeen, d.Reported.Version, lastRound)
		}
	}
}

// TestSeenFlushedOnShutdown: times still buffered when Run ends are
// written then; unknown devices are ignored.
func TestSeenFlushedOnShutdown(t *testing.T) {
	r, cs, _ := newCounted(t, time.Hour) // no flush but the last one
	ctx := context.Background()
	if _, err := r.Register(ctx, "gw-1", nil); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- r.Run(runCtx) }()
	for _, id := range []string{"gw-1", "gw-404"} {
		if err := r.Seen(ctx, id); err != nil {
			t.Fatalf("Seen(%s): %v", id, err)
		}
	}
	if d, _ := r.GetDevice(ctx, "gw-1"); !d.Reported.LastSeen.IsZero() {
		t.Fatalf("last seen %v before any flush", d.Reported.LastSeen)
	}
	stop()
	if err := <-ran; err != nil {
		t.Fatal(err)
	}
	if d, _ := r.GetDevice(ctx, "gw-1"); d.Reported.LastSeen.IsZero() {
		t.Error("the buffered last-seen time was not written at shutdown")
	}
	if n := cs.markSeen.Load(); n != 1 {
		t.Errorf("%d MarkSeen calls, want the one at shutdown", n)
	}
	if _, err := r.GetDevice(ctx, "gw-404"); err == nil {
		t.Error("Seen of an unknown device created it")
	}
	if err := r.Seen(ctx, "bad id/with slash"); err == nil {
		t.Error("Seen accepted an invalid id")
	}
}
