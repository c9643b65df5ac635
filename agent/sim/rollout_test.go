package sim_test

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferryhq/ferry/agent/sim"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/internal/testredis"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/tuf"
)

func (w *world) rollouts(t *testing.T) fleetv1connect.RolloutServiceClient {
	return fleetv1connect.NewRolloutServiceClient(w.f.HTTPClient(t), w.f.APIURL(), ferrytest.Bearer(w.f.OperatorToken(t)))
}

func (w *world) createRollout(t *testing.T, req *fleetv1.CreateRolloutRequest) *fleetv1.Rollout {
	t.Helper()
	resp, err := w.rollouts(t).CreateRollout(t.Context(), connect.NewRequest(req))
	if err != nil {
		t.Fatalf("CreateRollout: %v", err)
	}
	return resp.Msg.GetRollout()
}

// watchRollout follows a rollout with WatchRollout until it ends, and
// returns every version it saw.
func (w *world) watchRollout(t *testing.T, id string) []*fleetv1.Rollout {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	stream, err := w.rollouts(t).WatchRollout(ctx, connect.NewRequest(&fleetv1.WatchRolloutRequest{RolloutId: id}))
	if err != nil {
		t.Fatal(err)
	}
	var seen []*fleetv1.Rollout
	for stream.Receive() {
		seen = append(seen, stream.Msg().GetRollout())
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("WatchRollout: %v (last: %v)", err, seen[len(seen)-1])
	}
	if len(seen) == 0 || seen[len(seen)-1].GetEndTime() == nil {
		t.Fatalf("WatchRollout ended before the rollout did")
	}
	return seen
}

// waitRollout polls a rollout until ok says so.
func (w *world) waitRollout(t *testing.T, id string, what string, ok func(*fleetv1.Rollout) bool) *fleetv1.Rollout {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := w.rollouts(t).GetRollout(t.Context(), connect.NewRequest(&fleetv1.GetRolloutRequest{RolloutId: id}))
		if err != nil {
			t.Fatalf("GetRollout: %v", err)
		}
		if r := resp.Msg.GetRollout(); ok(r) {
			return r
		} else if time.Now().After(deadline) {
			t.Fatalf("rollout never %s: %v", what, r)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// running lists the bundles the devices report running, by device.
func (w *world) running(t *testing.T, ids []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, id := range ids {
		r, err := w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id}))
		if err != nil {
			t.Fatal(err)
		}
		out[id] = r.Msg.GetDevice().GetReported().GetState().GetBundle().GetTargetPath()
	}
	return out
}

// waitRunning waits until every device runs path.
func (w *world) waitRunning(t *testing.T, ids []string, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		bad := map[string]string{}
		for id, got := range w.running(t, ids) {
			if got != path {
				bad[id] = got
			}
		}
		if len(bad) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("devices not running %s: %v", path, bad)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func percentWave(p float64) *fleetv1.Wave {
	return &fleetv1.Wave{Size: &fleetv1.Wave_Percent{Percent: p}}
}
func countWave(n uint64) *fleetv1.Wave { return &fleetv1.Wave{Size: &fleetv1.Wave_Count{Count: n}} }

func inFlight(counts map[string]uint64) uint64 { return counts["QUEUED"] + counts["IN_PROGRESS"] }

func dispatched(counts map[string]uint64) uint64 {
	var n uint64
	for k, v := range counts {
		if k != "PENDING" {
			n += v
		}
	}
	return n
}

// TestRolloutWaves runs a staged rollout on a simulated fleet: every wave
// starts only after the one before it succeeded and soaked, and no more
// devices work on the job at once than allowed.
func TestRolloutWaves(t *testing.T) {
	w := newWorld(t)
	v2 := w.add(t, "gateway", "2.0.0", 32<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	fl := w.startFleet(t, "waves", 10, "gw-a", sim.Faults{})
	const soak = 300 * time.Millisecond
	ro := w.createRollout(t, &fleetv1.CreateRolloutRequest{
		Name: "gateway 2.0.0", Bundle: v2.bundle(), Selector: "fleet=waves",
		Strategy: &fleetv1.RolloutStrategy{
			Waves:       []*fleetv1.Wave{percentWave(10), percentWave(50), percentWave(100)},
			MaxInFlight: 3, Soak: durationpb.New(soak),
		},
	})
	seen := w.watchRollout(t, ro.GetId())
	for _, r := range seen {
		if n := inFlight(r.GetCounts()); n > 3 {
			t.Errorf("version with %d devices in flight, max 3: %v", n, r.GetCounts())
		}
		for i, wave := range r.GetWaves() {
			if i > 0 && dispatched(wave.GetCounts()) > 0 && r.GetWaves()[i-1].GetState() != "DONE" {
				t.Errorf("wave %d started while wave %d was %s", i+1, i, r.GetWaves()[i-1].GetState())
			}
		}
	}
	end := seen[len(seen)-1]
	if end.GetState() != "COMPLETED" || end.GetCounts()["SUCCEEDED"] != 10 || end.GetTargetCount() != 10 {
		t.Fatalf("rollout ended %s (%s) with %v, want COMPLETED with 10 SUCCEEDED", end.GetState(), end.GetStateReason(), end.GetCounts())
	}
	var sizes []uint64
	for i, wave := range end.GetWaves() {
		sizes = append(sizes, wave.GetSize())
		if i == 0 {
			continue
		}
		prev := end.GetWaves()[i-1]
		if soakEnd := prev.GetSoakEndTime().AsTime(); wave.GetBeginTime().AsTime().Before(soakEnd) {
			t.Errorf("wave %d began at %v, before wave %d's soak ended at %v", i+1, wave.GetBeginTime().AsTime(), i, soakEnd)
		}
	}
	if want := []uint64{1, 5, 4}; !slices.Equal(sizes, want) {
		t.Errorf("wave sizes %v, want %v", sizes, want)
	}
	w.waitRunning(t, fl.IDs, v2.path)
}

// TestRolloutAbortRollsBack fails the install on half of the fleet: the
// abort rule stops the rollout, and the devices it had moved get the
// rollback bundle.
func TestRolloutAbortRollsBack(t *testing.T) {
	w := newWorld(t)
	v1 := w.add(t, "gateway", "1.0.0", 16<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}, DowngradeAllowed: true})
	v2 := w.add(t, "gateway", "2.0.0", 32<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	good := w.startFleetAs(t, "abort-good-", "abort", 4, "gw-a", sim.Faults{})
	bad := w.startFleetAs(t, "abort-bad-", "abort", 4, "gw-a", sim.Faults{Install: 1})
	ro := w.createRollout(t, &fleetv1.CreateRolloutRequest{
		Bundle: v2.bundle(), Selector: "fleet=abort", RollbackBundle: v1.bundle(),
		AbortRules: []*fleetv1.AbortRule{{Status: devicev1.JobStatus_JOB_STATUS_FAILED, Percent: 25, MinExecutions: 2}},
	})
	seen := w.watchRollout(t, ro.GetId())
	end := seen[len(seen)-1]
	if end.GetState() != "ABORTED" || !strings.Contains(end.GetStateReason(), "FAILED") {
		t.Fatalf("rollout ended %s (%q), want ABORTED by the FAILED rule", end.GetState(), end.GetStateReason())
	}
	for i, wave := range end.GetWaves() {
		if st := wave.GetState(); st != "DONE" && st != "STOPPED" {
			t.Errorf("wave %d of an aborted rollout is %s, want DONE or STOPPED", i+1, st)
		}
	}
	// Every device the rollout moved, or was moving, is back on v1; the
	// failed ones never left what they ran.
	w.waitRunning(t, good.IDs, v1.path)
	for id, got := range w.running(t, bad.IDs) {
		if got == v2.path {
			t.Errorf("device %s runs %s after the abort", id, got)
		}
	}
	d, err := w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: good.IDs[0]}))
	if err != nil {
		t.Fatal(err)
	}
	if by := d.Msg.GetDevice().GetDesired().GetSetBy(); by != "rollout/"+ro.GetId()+"/rollback" {
		t.Errorf("desired state of %s set by %q, want the rollout's rollback", good.IDs[0], by)
	}
}

// TestRolloutPauseResume pauses a rollout after its first wave: nothing
// more is dispatched until it is resumed, and then it completes.
func TestRolloutPauseResume(t *testing.T) {
	w := newWorld(t)
	v2 := w.add(t, "gateway", "2.0.0", 16<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	fl := w.startFleet(t, "pause", 6, "gw-a", sim.Faults{})
	ro := w.createRollout(t, &fleetv1.CreateRolloutRequest{
		Bundle: v2.bundle(), Selector: "fleet=pause",
		Strategy: &fleetv1.RolloutStrategy{Waves: []*fleetv1.Wave{countWave(1), percentWave(100)}, Soak: durationpb.New(500 * time.Millisecond)},
	})
	api := w.rollouts(t)
	w.waitRollout(t, ro.GetId(), "started its first wave", func(r *fleetv1.Rollout) bool { return dispatched(r.GetCounts()) > 0 })
	paused, err := api.PauseRollout(t.Context(), connect.NewRequest(&fleetv1.PauseRolloutRequest{RolloutId: ro.GetId()}))
	if err != nil || paused.Msg.GetRollout().GetState() != "PAUSED" {
		t.Fatalf("PauseRollout: %v, %v", paused, err)
	}
	// The first wave finishes and soaks; the second does not start.
	r := w.waitRollout(t, ro.GetId(), "finished its first wave", func(r *fleetv1.Rollout) bool {
		return len(r.GetWaves()) > 0 && r.GetWaves()[0].GetState() == "DONE"
	})
	time.Sleep(time.Second) // twenty controller ticks
	r = w.waitRollout(t, ro.GetId(), "read", func(*fleetv1.Rollout) bool { return true })
	if got := dispatched(r.GetCounts()); r.GetState() != "PAUSED" || got != 1 {
		t.Fatalf("paused rollout is %s with %d devices given the job (%v), want PAUSED with 1", r.GetState(), got, r.GetCounts())
	}
	if _, err := api.ResumeRollout(t.Context(), connect.NewRequest(&fleetv1.ResumeRolloutRequest{RolloutId: ro.GetId()})); err != nil {
		t.Fatal(err)
	}
	seen := w.watchRollout(t, ro.GetId())
	if end := seen[len(seen)-1]; end.GetState() != "COMPLETED" || end.GetCounts()["SUCCEEDED"] != 6 {
		t.Fatalf("resumed rollout ended %s with %v", end.GetState(), end.GetCounts())
	}
	w.waitRunning(t, fl.IDs, v2.path)
	// A finished rollout cannot be paused.
	_, err = api.PauseRollout(t.Context(), connect.NewRequest(&fleetv1.PauseRolloutRequest{RolloutId: ro.GetId()}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("pausing a completed rollout: %v, want FailedPrecondition", err)
	}
}

// TestContinuousRolloutLateDevice checks that a device that matches a
// continuous rollout after its waves finished gets the bundle too.
func TestContinuousRolloutLateDevice(t *testing.T) {
	w := newWorld(t)
	v2 := w.add(t, "gateway", "2.0.0", 16<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	first := w.startFleetAs(t, "cont-", "cont", 3, "gw-a", sim.Faults{})
	ro := w.createRollout(t, &fleetv1.CreateRolloutRequest{Bundle: v2.bundle(), Selector: "fleet=cont", Continuous: true})
	w.waitRollout(t, ro.GetId(), "finished its waves", func(r *fleetv1.Rollout) bool {
		return r.GetCounts()["SUCCEEDED"] == 3 && len(r.GetWaves()) > 0 && r.GetWaves()[len(r.GetWaves())-1].GetState() == "DONE"
	})
	late := w.startFleetAs(t, "cont-late-", "cont", 2, "gw-a", sim.Faults{})
	r := w.waitRollout(t, ro.GetId(), "took in the late devices", func(r *fleetv1.Rollout) bool { return r.GetCounts()["SUCCEEDED"] == 5 })
	if r.GetState() != "RUNNING" || r.GetTargetCount() != 5 {
		t.Errorf("continuous rollout is %s with %d targets, want RUNNING with 5", r.GetState(), r.GetTargetCount())
	}
	w.waitRunning(t, append(first.IDs, late.IDs...), v2.path)
	// It runs until cancelled.
	c, err := w.rollouts(t).CancelRollout(t.Context(), connect.NewRequest(&fleetv1.CancelRolloutRequest{RolloutId: ro.GetId()}))
	if err != nil || c.Msg.GetRollout().GetState() != "CANCELED" {
		t.Fatalf("CancelRollout: %v, %v", c, err)
	}
	w.waitRollout(t, ro.GetId(), "ended", func(r *fleetv1.Rollout) bool { return r.GetEndTime() != nil })
}

// TestRolloutControllerHandover kills (SIGKILL) the ferryd whose rollout
// controller is running a rollout; the other instance takes the lease over
// and completes the rollout.
func TestRolloutControllerHandover(t *testing.T) {
	bin := buildFerryd(t)
	pki := t.TempDir()
	dev, err := credentials.EnsureDev(pki, credentials.DevOptions{TrustDomain: "ferry.test", Hosts: []string{"localhost", "127.0.0.1"}, CertTTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	redisURL, prefix := testredis.URL(t), testredis.Prefix(t)

	// The first instance takes the lease: it runs the controller only.
	first := exec.Command(bin, "--data-dir", t.TempDir(), "--device-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0",
		"--redis-url", redisURL, "--redis-prefix", prefix, "--trust-domain", "ferry.test",
		"--tls-cert", dev.ServerCert, "--tls-key", dev.ServerKey, "--device-ca", dev.CACert, "--operator-keys", dev.Operators,
		"--rollout-tick", "50ms", "--rollout-resync", "500ms", "--rollout-lease-ttl", "1500ms", "--log-level", "debug")
	first.Env = os.Environ()
	logs, err := first.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Process.Kill(); first.Wait() })
	log := &procLog{}
	leading := make(chan struct{})
	go log.follow(logs, "rollout controller leading", leading)
	select {
	case <-leading:
	case <-time.After(30 * time.Second):
		t.Fatalf("the first ferryd never led the rollouts:\n%s", log)
	}

	// The second instance serves the devices and the operator.
	second := ferrytest.Start(t, ferrytest.Redis, func(cfg *server.Config) {
		cfg.RedisURL, cfg.RedisPrefix = redisURL, prefix
		cfg.TLSCertFile, cfg.TLSKeyFile, cfg.DeviceCAFile, cfg.OperatorKeysFile = dev.ServerCert, dev.ServerKey, dev.CACert, dev.Operators
		cfg.DeviceIssuerCertFile, cfg.DeviceIssuerKeyFile = dev.CACert, dev.CAKey
	})
	second.Dev = dev
	if second.LeadsRollouts() {
		t.Fatal("the second ferryd leads the rollouts while the first holds the lease")
	}
	w := newWorldOn(t, second)
	v2 := w.add(t, "gateway", "2.0.0", 16<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	fl := w.startFleet(t, "handover", 6, "gw-a", sim.Faults{})
	ro := w.createRollout(t, &fleetv1.CreateRolloutRequest{
		Bundle: v2.bundle(), Selector: "fleet=handover",
		Strategy: &fleetv1.RolloutStrategy{Waves: []*fleetv1.Wave{countWave(2), percentWave(100)}, Soak: durationpb.New(time.Second)},
	})
	w.waitRollout(t, ro.GetId(), "finished its first wave", func(r *fleetv1.Rollout) bool {
		return len(r.GetWaves()) > 0 && (r.GetWaves()[0].GetState() == "SOAKING" || r.GetWaves()[0].GetState() == "DONE")
	})
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.Wait()
	seen := w.watchRollout(t, ro.GetId())
	if end := seen[len(seen)-1]; end.GetState() != "COMPLETED" || end.GetCounts()["SUCCEEDED"] != 6 {
		t.Fatalf("rollout ended %s with %v after the handover", end.GetState(), end.GetCounts())
	}
	if !second.LeadsRollouts() {
		t.Error("the second ferryd does not lead the rollouts")
	}
	w.waitRunning(t, fl.IDs, v2.path)
	if !strings.Contains(log.String(), "wave started") {
		t.Errorf("the first ferryd never ran the rollout:\n%s", log)
	}
}

// buildFerryd builds ferryd into the test's temporary directory.
func buildFerryd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ferryd")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/ferryhq/ferry/cmd/ferryd")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("build ferryd: %v", err)
	}
	return bin
}

// procLog keeps a child process's log and signals when a line appears.
type procLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *procLog) follow(r io.Reader, line string, seen chan<- struct{}) {
	s := bufio.NewScanner(r)
	once := sync.Once{}
	for s.Scan() {
		l.mu.Lock()
		l.b.WriteString(s.Text() + "\n")
		l.mu.Unlock()
		if strings.Contains(s.Text(), line) {
			once.Do(func() { close(seen) })
		}
	}
}

func (l *procLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
