package agent_test

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferryhq/ferry/agent"
)

// TestInventoryMidStream: the agent reports its attributes and its
// inventory hook's in Hello, and after a job sends what changed in an
// Inventory message on the same stream, without reconnecting.
func TestInventoryMidStream(t *testing.T) {
	w := newWorld(t)
	d := w.newDevice(t, "inv-1")
	out := filepath.Join(t.TempDir(), "inventory.txt")
	if err := os.WriteFile(out, []byte("board_rev=C\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hook := filepath.Join(t.TempDir(), "hook")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\ncat "+out+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := &countingLink{Link: w.link}
	w.background(t, d, func(c *agent.Config) {
		c.Link, c.Hardware, c.StorageDir, c.InventoryHook = link, "gw-a", d.dir, []string{hook}
	})
	attrs := w.waitAttributes(t, d, func(a map[string]string) bool { return a["board_rev"] == "C" })
	for _, k := range []string{"hardware", "agent_version", "storage_free_bytes"} {
		if attrs[k] == "" {
			t.Errorf("Hello's attributes %v lack %s", attrs, k)
		}
	}
	dials := link.dials.Load()

	if err := os.WriteFile(out, []byte("board_rev=D\nmodem=lte\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	v := w.setDesired(t, d, nil, map[string]string{"mode": "eco"})
	w.waitSettled(t, d, v)
	w.waitAttributes(t, d, func(a map[string]string) bool { return a["board_rev"] == "D" && a["modem"] == "lte" })
	if again := link.dials.Load(); again != dials {
		t.Errorf("the device dialed %d times, %d before the change: the change was to come in an Inventory message", again, dials)
	}
}

// countingLink counts the connections the agent opens.
type countingLink struct {
	agent.Link
	dials atomic.Int32
}

func (l *countingLink) Dial(ctx context.Context, creds *agent.Credentials) (agent.Conn, error) {
	l.dials.Add(1)
	return l.Link.Dial(ctx, creds)
}

// waitAttributes waits until the device's attributes satisfy ok and
// returns them.
func (w *world) waitAttributes(t *testing.T, d *device, ok func(map[string]string) bool) map[string]string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		a := w.device(t, d).GetAttributes()
		if ok(a) {
			return maps.Clone(a)
		}
		if time.Now().After(deadline) {
			t.Fatalf("attributes of %s: %v", d.id, a)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
