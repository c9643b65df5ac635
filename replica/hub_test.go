package replica_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store/bolt"
)

// TestReplacedStreamKeepsItsNotices: with the store's directed notices,
// a device whose stream is replaced on the same instance (a new
// subscription, then the old one ends) is still held: its changes keep
// reaching the new stream.
func TestReplacedStreamKeepsItsNotices(t *testing.T) {
	s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	r := replica.New(replica.Config{Devices: s, Changes: s, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- r.Run(ctx) }()
	if _, err := r.Register(ctx, "dev-1", nil); err != nil {
		t.Fatal(err)
	}
	_, _, endOld := r.Subscribe(ctx, "dev-1")
	ch, _, endNew := r.Subscribe(ctx, "dev-1")
	defer endNew()
	endOld()
	// Run's subscription may take a moment: set until the signal comes.
	for heard := false; !heard; {
		if _, err := r.SetDesired(ctx, "dev-1", doc("fw.bin"), "op", nil); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ch:
			heard = true
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("the replacing stream got no change signal")
		}
	}
	// The signal above may have been the subscription's AllChanged; this
	// one is the change's.
	for drained := false; !drained; {
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
			drained = true
		}
	}
	if _, err := r.SetDesired(ctx, "dev-1", doc("fw2.bin"), "op", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatal("the replacing stream got no signal of the second change")
	}
}
