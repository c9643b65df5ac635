package sim_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	goredis "github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferryhq/ferry/agent/sim"
	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/internal/testredis"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/tuf"
)

// clusterPair starts ferryd B on the Redis Cluster at seeds with a world
// (repository, bundle 2.0.0), then ferryd A as B's peer on the same
// cluster keys and repository. The devices connect to B; the operator
// works through A.
func clusterPair(t *testing.T, seeds []string) (a *ferrytest.Ferryd, w *world, v2 published) {
	t.Helper()
	repoDir := t.TempDir()
	onCluster := func(cfg *server.Config) {
		cfg.RedisURL = "redis+cluster://" + strings.Join(seeds, ",")
		cfg.Repository.URL = repoDir
	}
	b := ferrytest.Start(t, ferrytest.Redis, onCluster)
	w = newWorldOn(t, b)
	v2 = w.add(t, "gateway", "2.0.0", 16<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	a = b.StartPeer(t, onCluster)
	return a, w, v2
}

// TestClusterTwoInstances: two ferryd on a three-master Redis Cluster; a
// desired state set through A reaches devices connected to B, and a
// rollout created through A completes.
func TestClusterTwoInstances(t *testing.T) {
	a, w, v2 := clusterPair(t, testredis.Cluster(t))
	fl := w.startFleet(t, "pair", 4, "gw-a", sim.Faults{})

	resp, err := a.Fleet(t).SetDesiredState(t.Context(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		Selector: "fleet=pair", Document: &devicev1.DesiredDocument{Bundle: v2.bundle()},
	}))
	if err != nil || resp.Msg.GetDevicesUpdated() != uint64(len(fl.IDs)) {
		t.Fatalf("SetDesiredState through A: %v, %v", resp, err)
	}
	for _, d := range w.wait(t, fl.IDs) {
		if d.GetJob().GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED {
			t.Fatalf("%s: job %v", d.GetId(), d.GetJob())
		}
	}
	w.waitRunning(t, fl.IDs, v2.path)

	v3 := w.add(t, "gateway", "3.0.0", 16<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	// A learns of a bundle published through B by reading the repository
	// again; until then it may refuse the rollout as unknown.
	var ro *fleetv1.Rollout
	aw := &world{f: a}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := aw.rollouts(t).CreateRollout(t.Context(), connect.NewRequest(&fleetv1.CreateRolloutRequest{
			Bundle: v3.bundle(), Selector: "fleet=pair",
			Strategy: &fleetv1.RolloutStrategy{Waves: []*fleetv1.Wave{countWave(1), percentWave(100)}, Soak: durationpb.New(200 * time.Millisecond)},
		}))
		if err == nil {
			ro = r.Msg.GetRollout()
			break
		}
		if connect.CodeOf(err) != connect.CodeInvalidArgument && connect.CodeOf(err) != connect.CodeNotFound || time.Now().After(deadline) {
			t.Fatalf("CreateRollout through A: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	seen := w.watchRollout(t, ro.GetId())
	if end := seen[len(seen)-1]; end.GetState() != "COMPLETED" || end.GetCounts()["SUCCEEDED"] != uint64(len(fl.IDs)) {
		t.Fatalf("rollout ended %s with %v", end.GetState(), end.GetCounts())
	}
	w.waitRunning(t, fl.IDs, v3.path)
}

// TestClusterMasterRestart: a rollout runs on a cluster whose busiest
// master is killed (SIGKILL; appendfsync always) and started again on the
// same port and directory mid-rollout. The rollout completes, and nothing
// acknowledged before the kill is lost.
func TestClusterMasterRestart(t *testing.T) {
	cl := testredis.PrivateCluster(t)
	a, w, v2 := clusterPair(t, cl.Seeds)
	fl := w.startFleet(t, "restart", 6, "gw-a", sim.Faults{})
	// Devices that are not in the rollout: their desired state, set and
	// acknowledged before the kill, must survive it.
	idle := w.startFleet(t, "idle", 2, "gw-b", sim.Faults{})
	set, err := a.Fleet(t).SetDesiredState(t.Context(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		Selector: "fleet=idle", Document: &devicev1.DesiredDocument{Config: map[string]string{"mode": "kept"}},
	}))
	if err != nil || set.Msg.GetDevicesUpdated() != 2 {
		t.Fatalf("SetDesiredState: %v, %v", set, err)
	}
	before := map[string]uint64{}
	for _, d := range w.wait(t, idle.IDs) {
		before[d.GetId()] = d.GetDesired().GetVersion()
	}

	ro := w.createRollout(t, &fleetv1.CreateRolloutRequest{
		Bundle: v2.bundle(), Selector: "fleet=restart",
		Strategy: &fleetv1.RolloutStrategy{Waves: []*fleetv1.Wave{countWave(2), percentWave(100)}, Soak: durationpb.New(time.Second)},
	})
	first := w.waitRollout(t, ro.GetId(), "finished its first wave", func(r *fleetv1.Rollout) bool {
		return len(r.GetWaves()) > 0 && (r.GetWaves()[0].GetState() == "SOAKING" || r.GetWaves()[0].GetState() == "DONE")
	})
	succeeded := first.GetCounts()["SUCCEEDED"]

	busiest := busiestMaster(t, cl.Seeds)
	cl.Kill(t, busiest)
	time.Sleep(500 * time.Millisecond) // requests fail meanwhile
	cl.Restart(t, busiest)

	seen := w.watchRollout(t, ro.GetId())
	end := seen[len(seen)-1]
	if end.GetState() != "COMPLETED" || end.GetCounts()["SUCCEEDED"] != uint64(len(fl.IDs)) {
		t.Fatalf("rollout ended %s with %v after a master restart", end.GetState(), end.GetCounts())
	}
	if end.GetCounts()["SUCCEEDED"] < succeeded {
		t.Errorf("SUCCEEDED went from %d to %d", succeeded, end.GetCounts()["SUCCEEDED"])
	}
	w.waitRunning(t, fl.IDs, v2.path)
	for id, v := range before {
		r, err := w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id}))
		if err != nil {
			t.Fatal(err)
		}
		if d := r.Msg.GetDevice().GetDesired(); d.GetVersion() != v || d.GetDocument().GetConfig()["mode"] != "kept" {
			t.Errorf("%s: desired %v after the restart, want version %d with mode=kept", id, d, v)
		}
	}
}

// busiestMaster returns the index of the seed that holds the most keys.
func busiestMaster(t *testing.T, seeds []string) int {
	t.Helper()
	best, most := 0, int64(-1)
	for i, a := range seeds {
		c := goredis.NewClient(&goredis.Options{Addr: a})
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		n, err := c.DBSize(ctx).Result()
		cancel()
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		if n > most {
			best, most = i, n
		}
	}
	return best
}
