package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ferryhq/ferry/agent"
)

// downReboot is a reboot hook on a real device: it asks the device to
// reboot and never returns, because the device goes down first.
type downReboot struct{ rebooting chan struct{} }

func (r downReboot) Reboot(context.Context, agent.Job) error {
	r.rebooting <- struct{}{}
	select {} // the power is cut before the hook returns
}

// TestDownloadsRemoved runs nine updates on a device whose reboot hook
// never returns (its agent stops in the hook, as on a real device) and
// checks that its download directory keeps only what the pending job
// needs while it reboots, and nothing once each job has ended, and that
// files left by earlier runs are removed when the agent starts.
func TestDownloadsRemoved(t *testing.T) {
	w := newWorld(t)
	d := w.newDevice(t, "dl-1")
	d.rebooter = downReboot{rebooting: make(chan struct{})}
	stale := []string{"0000000000000000000000000000000000000000000000000000000000000000.part", "stale.part", ".tmp-old"}
	if err := os.MkdirAll(d.downloads(), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range stale {
		if err := os.WriteFile(filepath.Join(d.downloads(), name), make([]byte, 64<<10), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 9; i++ {
		b := w.add(t, fmt.Sprintf("gateway/%d.0.0/fw.bin", i), 8<<10)
		version := w.setDesired(t, d, b, nil)

		// Up to the reboot: the agent stops inside the hook.
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.run(ctx, d, nil) }()
		select {
		case <-d.rebooter.(downReboot).rebooting:
		case err := <-done:
			cancel()
			t.Fatalf("update %d: the agent ended (%v) before its reboot", i, err)
		case <-time.After(20 * time.Second):
			cancel()
			t.Fatalf("update %d: no reboot", i)
		}
		cancel()
		if got, want := dirEntries(t, d.downloads()), []string{b.GetSha256() + ".part"}; !slices.Equal(got, want) {
			t.Errorf("update %d, rebooting: downloads %v, want only the pending job's %v", i, got, want)
		}

		// After the reboot: confirmed, reported, and the download gone.
		stop := w.background(t, d, nil)
		dev := w.waitSettled(t, d, version)
		stop()
		if got := dev.GetJob().GetStatus().String(); got != "JOB_STATUS_SUCCEEDED" {
			t.Fatalf("update %d: job %s", i, got)
		}
		if got := dirEntries(t, d.downloads()); len(got) > 0 {
			t.Errorf("update %d, done: downloads %v, want none", i, got)
		}
	}
}
