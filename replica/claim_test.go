package replica_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
	"github.com/ferryhq/ferry/store/redis"
)

// backends opens a fresh store of each kind for the tests that hold for
// every backend.
var backends = []struct {
	name string
	open func(t *testing.T) store.Devices
}{
	{"embedded", func(t *testing.T) store.Devices {
		s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
		if err != nil {
			t.Fatal(err)
		}
		s.SetClock(testclock.Now)
		return s
	}},
	{"redis", func(t *testing.T) store.Devices {
		s, err := redis.Open(context.Background(), testredis.URL(t), testredis.Prefix(t))
		if err != nil {
			t.Fatal(err)
		}
		s.SetClock(testclock.Now)
		return s
	}},
}

// onEachBackend runs f with a replica on each backend and its store.
func onEachBackend(t *testing.T, f func(t *testing.T, r *replica.Service, s store.Devices)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			s := b.open(t)
			t.Cleanup(func() { s.Close() })
			f(t, replica.New(replica.Config{Devices: s, Logger: slog.New(slog.DiscardHandler), Now: testclock.Now}), s)
		})
	}
}

func bundleOf(target string) store.Bundle {
	return store.Bundle{TargetPath: target, Length: 10, SHA256: sum}
}

// verified gives device id the desired bundle target and records the
// device's signed SUCCEEDED report for it.
func verified(t *testing.T, r *replica.Service, id, target string) store.Device {
	t.Helper()
	ctx := context.Background()
	if _, err := r.Connect(ctx, id, replica.Hello{AgentVersion: "ferry-agent/test"}); err != nil {
		t.Fatal(err)
	}
	d, err := r.SetDesired(ctx, id, doc(target), "op", nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.Report(ctx, id, signedSuccess(d, target))
	if err != nil || !out.Accepted {
		t.Fatalf("report of %s: %+v, %v", target, out, err)
	}
	return out.Device
}

func signedSuccess(d store.Device, target string) replica.Report {
	return replica.Report{JobID: d.Desired.JobID, DesiredVersion: d.Desired.Version, Status: replica.StatusSucceeded,
		State: replica.State{Bundle: bundleOf(target)}, Signed: &replica.Signed{Envelope: []byte("{}")}}
}

func bundleIDs(t *testing.T, s store.Devices, bundle string) []string {
	t.Helper()
	page, err := s.ListDevices(context.Background(), store.ListOptions{Limit: 100, Query: store.Query{Bundle: bundle}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, d := range page {
		ids = append(ids, d.ID)
	}
	return ids
}

func eventKinds(t *testing.T, r *replica.Service, id string) []string {
	t.Helper()
	events, err := r.ListEvents(context.Background(), id, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, ev := range events {
		kinds = append(kinds, ev.Kind)
	}
	return kinds
}

// TestHelloClaimIsNotEvidence: what a Hello says the device runs is kept as
// its claim, with one history event, and changes neither the verified
// state, nor the bundle index, nor the summary.
func TestHelloClaimIsNotEvidence(t *testing.T) {
	onEachBackend(t, func(t *testing.T, r *replica.Service, s store.Devices) {
		ctx := context.Background()
		before := verified(t, r, "dev-1", "gw/fw-1.bin")
		forged := replica.State{Bundle: bundleOf("evil/never-published.bin"), Config: map[string]string{"owner": "me"}}
		hello := replica.Hello{AgentVersion: "other-stack/0.1", LastApplied: 9, State: forged}
		for range 3 { // one event, however often the device says it
			if _, err := r.Connect(ctx, "dev-1", hello); err != nil {
				t.Fatal(err)
			}
		}
		// A device never heard from before claims the same.
		if _, err := r.Connect(ctx, "dev-2", hello); err != nil {
			t.Fatal(err)
		}

		d1, _ := r.GetDevice(ctx, "dev-1")
		rep := d1.Reported
		if rep.Bundle != before.Reported.Bundle || rep.DesiredVersion != before.Reported.DesiredVersion || !rep.Signed ||
			rep.Job != before.Reported.Job || !cmp.Equal(rep.Config, before.Reported.Config) {
			t.Errorf("verified state after the claim: %+v; want it as the report left it: %+v", rep, before.Reported)
		}
		wantClaim := &store.Claim{Bundle: forged.Bundle, Config: forged.Config, LastApplied: 9}
		if diff := cmp.Diff(wantClaim, rep.Claim, cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".At" }, cmp.Ignore())); diff != "" {
			t.Errorf("claim (-want +got):\n%s", diff)
		}
		if rep.Claim != nil && rep.Claim.At.IsZero() {
			t.Error("claim without its time")
		}
		if rep.AgentVersion != "other-stack/0.1" {
			t.Errorf("agent version %q, want the Hello's", rep.AgentVersion)
		}
		if got := eventKinds(t, r, "dev-1"); !cmp.Equal(got[:1], []string{replica.EventHelloClaim}) || count(got, replica.EventHelloClaim) != 1 {
			t.Errorf("dev-1 events %v; want one hello_claim, the newest", got)
		}
		if d2, _ := r.GetDevice(ctx, "dev-2"); !d2.Reported.Bundle.IsZero() || d2.Reported.Claim == nil || d2.Reported.Signed {
			t.Errorf("dev-2 after a Hello only: %+v; want no verified bundle and the claim", d2.Reported)
		}

		for bundle, want := range map[string][]string{
			"evil/never-published.bin": nil,
			"gw/fw-1.bin":              {"dev-1"},
			store.NoBundle:             {"dev-2"},
		} {
			if got := bundleIDs(t, s, bundle); !cmp.Equal(got, want) {
				t.Errorf("devices running %s: %v, want %v", bundle, got, want)
			}
		}
		sum, err := s.Summary(ctx, testclock.Now().Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]uint64{"gw/fw-1.bin": 1, store.NoBundle: 1}; !cmp.Equal(sum.PerBundle, want) {
			t.Errorf("devices per bundle %v, want %v", sum.PerBundle, want)
		}

		// A Hello that agrees with the verified state drops the claim.
		agree := replica.Hello{AgentVersion: "ferry-agent/test", LastApplied: before.Reported.DesiredVersion,
			State: replica.State{Bundle: before.Reported.Bundle, Config: before.Reported.Config}}
		if d, err := r.Connect(ctx, "dev-1", agree); err != nil || d.Reported.Claim != nil {
			t.Errorf("after an agreeing Hello: claim %+v, %v; want none", d.Reported.Claim, err)
		}
	})
}

// TestLostStateDevice: a device that lost its state says in its Hello that
// it runs nothing; the verified state stays, the Delta names the bundle as
// changed, and its repeated signed report for the same job and bundle is
// acknowledged and drops the claim.
func TestLostStateDevice(t *testing.T) {
	onEachBackend(t, func(t *testing.T, r *replica.Service, s store.Devices) {
		ctx := context.Background()
		before := verified(t, r, "dev-1", "gw/fw-2.bin")
		d, err := r.Connect(ctx, "dev-1", replica.Hello{AgentVersion: "ferry-agent/test"})
		if err != nil {
			t.Fatal(err)
		}
		if d.Reported.Bundle != before.Reported.Bundle || d.Reported.DesiredVersion != 1 || d.JobStatus() != string(replica.StatusSucceeded) {
			t.Errorf("after a Hello with no state: %+v, job %s; want the verified state kept", d.Reported, d.JobStatus())
		}
		if d.Reported.Claim == nil || !d.Reported.Claim.Bundle.IsZero() {
			t.Errorf("claim %+v, want one of no bundle", d.Reported.Claim)
		}
		if got := replica.ChangedFields(d.Desired, d.Reported); !cmp.Equal(got, []string{"bundle"}) {
			t.Errorf("changed fields for the device %v, want [bundle]: it said it runs nothing", got)
		}

		out, err := r.Report(ctx, "dev-1", signedSuccess(d, "gw/fw-2.bin"))
		if err != nil {
			t.Fatal(err)
		}
		if !out.Accepted || !out.Repeated || out.Superseded {
			t.Fatalf("repeated report: %+v; want accepted as repeated", out)
		}
		after := out.Device.Reported
		if after.Claim != nil || after.Bundle != before.Reported.Bundle || after.Job != before.Reported.Job || !after.Signed {
			t.Errorf("after the repeated report: %+v; want the verified state and no claim", after)
		}
		if got := eventKinds(t, r, "dev-1"); got[0] != replica.EventJobRepeated || count(got, replica.EventJobEnded) != 1 {
			t.Errorf("events %v; want job_repeated newest and the job ended once", got)
		}
		if a, err := r.GetAttestation(ctx, "dev-1", d.Desired.JobID); err != nil || string(a.Envelope) != "{}" {
			t.Errorf("attestation %+v, %v; want the first one kept", a, err)
		}
		// Once more, with no claim left: acknowledged, nothing written.
		again, err := r.Report(ctx, "dev-1", signedSuccess(d, "gw/fw-2.bin"))
		if err != nil || !again.Accepted || !again.Repeated || again.Device.Reported.Version != after.Version {
			t.Errorf("second repeat: %+v, %v; want acknowledged at reported v%d", again, err, after.Version)
		}
		if got := bundleIDs(t, s, "gw/fw-2.bin"); !cmp.Equal(got, []string{"dev-1"}) {
			t.Errorf("devices running gw/fw-2.bin: %v", got)
		}
	})
}

func count(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}
