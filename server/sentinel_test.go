package server_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/internal/testredis"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/server"
)

// accepted is a report ferryd answered Accepted.
type accepted struct {
	device, job string
	version     uint64
}

// TestSentinelFailoverKeepsAcceptedReports: ferryd on Sentinel with
// --redis-min-replicas 1 ingests reports from four devices while the
// primary is killed (SIGKILL). Every report answered Accepted is in the
// store after the failover, and devices and ferryd go on by themselves:
// each device has reports accepted after it.
func TestSentinelFailoverKeepsAcceptedReports(t *testing.T) {
	set := testredis.Sentinel(t)
	devices := []string{"dev-1", "dev-2", "dev-3", "dev-4"}
	f := ferrytest.Start(t, ferrytest.Redis, func(cfg *server.Config) {
		cfg.RedisURL = "redis+sentinel://" + strings.Join(set.Sentinels, ",") + "/" + set.MasterName
		cfg.RedisMinReplicas, cfg.RedisMinReplicasTimeout = 1, time.Second
		cfg.Dev.Devices = devices
	})
	f.Publish(t, "gw/fw.bin")

	var (
		mu   sync.Mutex
		acks []accepted
		// phase 0: before the kill; 1: after the failover and restart.
		phase  int
		counts = map[string][2]int{}
	)
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for _, id := range devices {
		wg.Go(func() {
			fleet := f.Fleet(t)
			var applied uint64
			for n := 0; ctx.Err() == nil; n++ {
				d, err := f.DialDevice(t, id, &devicev1.Hello{LastAppliedDesiredVersion: applied})
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				for ctx.Err() == nil {
					a, ok := reportOnce(ctx, fleet, d, id, n)
					if !ok {
						break
					}
					applied = a.version
					mu.Lock()
					acks = append(acks, a)
					c := counts[id]
					c[phase]++
					counts[id] = c
					mu.Unlock()
				}
				d.Close()
			}
		})
	}
	// waitCounts waits until every device has at least n accepted reports
	// in the current phase.
	waitCounts := func(what string, n int) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			mu.Lock()
			ok := true
			for _, id := range devices {
				ok = ok && counts[id][phase] >= n
			}
			snapshot := fmtCounts(counts)
			mu.Unlock()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				stop()
				t.Fatalf("%s: accepted reports per device %s", what, snapshot)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitCounts("before the kill", 3)
	old := set.KillPrimary(t)
	start := time.Now()
	set.WaitFailover(t, old, 30*time.Second)
	// The promoted replica has no replica of its own until the old
	// primary comes back as one; until then writes wait for it in vain.
	set.RestartKilled(t)
	t.Logf("failover and restart in %v", time.Since(start).Round(100*time.Millisecond))
	mu.Lock()
	phase = 1
	mu.Unlock()
	waitCounts("after the failover", 2)
	stop()
	wg.Wait()

	// Every accepted report is in the store: its signed report is kept,
	// and no device's reported version is behind its last accepted one.
	fleet := f.Fleet(t)
	last := map[string]uint64{}
	for _, a := range acks {
		if _, err := fleet.GetAttestation(t.Context(), connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: a.device, JobId: a.job})); err != nil {
			t.Errorf("accepted report %s/%s (version %d): %v", a.device, a.job, a.version, err)
		}
		last[a.device] = max(last[a.device], a.version)
	}
	for id, v := range last {
		r, err := fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id}))
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Msg.GetDevice().GetReported().GetDesiredVersion(); got < v {
			t.Errorf("%s: reported version %d, but version %d was accepted", id, got, v)
		}
	}
	t.Logf("%d accepted reports, all kept; per device %s", len(acks), fmtCounts(counts))
}

// reportOnce sets a new desired state for the device, waits for its Delta
// and reports it done; ok is false when any step fails (the caller opens
// a new stream).
func reportOnce(ctx context.Context, fleet interface {
	SetDesiredState(context.Context, *connect.Request[fleetv1.SetDesiredStateRequest]) (*connect.Response[fleetv1.SetDesiredStateResponse], error)
}, d *ferrytest.Device, id string, n int) (accepted, bool) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := fleet.SetDesiredState(rctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{DeviceId: id, Document: &devicev1.DesiredDocument{
		Bundle: bundle("gw/fw.bin"), Config: map[string]string{"n": strconv.Itoa(n)},
	}}))
	if err != nil {
		return accepted{}, false
	}
	want := resp.Msg.GetDevice().GetDesired().GetVersion()
	for {
		msg, err := d.RecvErr()
		if err != nil {
			return accepted{}, false
		}
		delta := msg.GetDelta()
		if delta == nil || delta.GetDesiredVersion() < want {
			continue // an older Delta, or an answer to an earlier stream's report
		}
		r := &devicev1.Report{
			JobId: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED,
			Reported: &devicev1.ReportedState{Bundle: delta.GetDesired().GetBundle(), Config: delta.GetDesired().GetConfig()},
		}
		if err := d.Stream.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{Envelope: d.Sign(r, d.Nonce)}}}); err != nil {
			return accepted{}, false
		}
		for {
			msg, err := d.RecvErr()
			if err != nil {
				return accepted{}, false
			}
			if acc := msg.GetAccepted(); acc != nil {
				if acc.GetJobId() != r.GetJobId() || acc.GetDesiredVersion() != r.GetDesiredVersion() {
					return accepted{}, false
				}
				return accepted{device: id, job: r.GetJobId(), version: r.GetDesiredVersion()}, true
			}
			if msg.GetRejected() != nil {
				return accepted{}, false
			}
			// A Delta for a newer version may come first; the answer follows.
		}
	}
}

func fmtCounts(counts map[string][2]int) string {
	var b strings.Builder
	for id, c := range counts {
		b.WriteString(id + ":" + strconv.Itoa(c[0]) + "+" + strconv.Itoa(c[1]) + " ")
	}
	return b.String()
}
