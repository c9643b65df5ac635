package replica_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
)

// countingDevices counts the calls that reach a real store.
type countingDevices struct {
	store.Devices
	reads, writes atomic.Int64
}

func (c *countingDevices) GetDevice(ctx context.Context, id string) (store.Device, error) {
	c.reads.Add(1)
	return c.Devices.GetDevice(ctx, id)
}

func (c *countingDevices) CreateDevice(ctx context.Context, d store.Device) (store.Device, bool, error) {
	c.writes.Add(1)
	return c.Devices.CreateDevice(ctx, d)
}

func (c *countingDevices) SetReported(ctx context.Context, id string, expect uint64, r store.Reported, w store.Write) (store.Device, error) {
	c.writes.Add(1)
	return c.Devices.SetReported(ctx, id, expect, r, w)
}

// TestHelloUnchangedCostsOneRead: a Hello that says what the device said
// last time (a fleet reconnecting after a restart) reads the device once
// and writes nothing; one that changes something writes.
func TestHelloUnchangedCostsOneRead(t *testing.T) {
	ctx := t.Context()
	s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := &countingDevices{Devices: s}
	r := replica.New(replica.Config{Devices: c, Logger: slog.New(slog.DiscardHandler)})
	claim := replica.State{Bundle: store.Bundle{TargetPath: "fw-1.bin", Length: 10, SHA256: sum}}
	tests := []struct {
		name   string
		hello  replica.Hello
		writes bool
	}{
		{"first Hello registers", replica.Hello{AgentVersion: "a/1"}, true},
		{"the same Hello", replica.Hello{AgentVersion: "a/1"}, false},
		{"a new agent version", replica.Hello{AgentVersion: "a/2"}, true},
		{"the same again", replica.Hello{AgentVersion: "a/2"}, false},
		{"a claim", replica.Hello{AgentVersion: "a/2", LastApplied: 0, State: claim}, true},
		{"the same claim", replica.Hello{AgentVersion: "a/2", LastApplied: 0, State: claim}, false},
		{"the claim dropped", replica.Hello{AgentVersion: "a/2"}, true},
	}
	for _, tt := range tests {
		reads0, writes0 := c.reads.Load(), c.writes.Load()
		if _, err := r.Connect(ctx, "dev-1", tt.hello); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		reads, writes := c.reads.Load()-reads0, c.writes.Load()-writes0
		if tt.writes && writes == 0 {
			t.Errorf("%s: no write", tt.name)
		}
		if !tt.writes && (writes != 0 || reads != 1) {
			t.Errorf("%s: %d reads and %d writes, want 1 read and none", tt.name, reads, writes)
		}
	}
	dev, err := r.GetDevice(ctx, "dev-1")
	if err != nil || dev.Reported.AgentVersion != "a/2" || dev.Reported.Claim != nil {
		t.Fatalf("device after the Hellos: %+v, %v", dev.Reported, err)
	}
}
