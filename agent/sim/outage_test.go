package sim_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/agent/sim"
	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/internal/testredis"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/tuf"
)

// tokenGate is the devices' link to ferryd with a gate before their
// download-token requests: each request waits until the gate opens, then
// goes to ferryd as it came. It records which devices reached the gate and
// which were answered Unavailable.
type tokenGate struct {
	agent.Link
	open chan struct{}

	mu          sync.Mutex
	waiting     map[*agent.Credentials]bool
	unavailable map[*agent.Credentials]bool
}

func newTokenGate(l agent.Link) *tokenGate {
	return &tokenGate{Link: l, open: make(chan struct{}),
		waiting: map[*agent.Credentials]bool{}, unavailable: map[*agent.Credentials]bool{}}
}

// counts returns how many devices reached the gate and how many were
// answered Unavailable.
func (g *tokenGate) counts() (reached, unavailable int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.waiting), len(g.unavailable)
}

// Dial implements agent.Link.
func (g *tokenGate) Dial(ctx context.Context, creds *agent.Credentials) (agent.Conn, error) {
	c, err := g.Link.Dial(ctx, creds)
	if err != nil {
		return nil, err
	}
	return &gatedConn{Conn: c, g: g, creds: creds}, nil
}

type gatedConn struct {
	agent.Conn
	g     *tokenGate
	creds *agent.Credentials
}

func (c *gatedConn) DownloadToken(ctx context.Context, target string) (agent.DownloadToken, error) {
	c.g.mu.Lock()
	c.g.waiting[c.creds] = true
	c.g.mu.Unlock()
	select {
	case <-c.g.open:
	case <-ctx.Done():
		return agent.DownloadToken{}, ctx.Err()
	}
	tok, err := c.Conn.DownloadToken(ctx, target)
	if errors.Is(err, agent.ErrUnavailable) {
		c.g.mu.Lock()
		c.g.unavailable[c.creds] = true
		c.g.mu.Unlock()
	}
	return tok, err
}

// TestRedisOutageMidRollout: ferryd runs on a Redis of the test's own
// (append-only, fsync always), and a rollout of a new bundle goes to 20
// simulated devices. Redis is killed with SIGKILL once every device has
// its job and has verified the repository, when it asks for its download
// token. While Redis is down, readiness answers 503, the API Unavailable,
// and every device is refused its token as Unavailable. Redis is started
// again on the same port and directory: readiness comes back, the devices
// get their tokens, the rollout completes with every execution SUCCEEDED
// at its first attempt, and no device's history has a failed job or a
// token failure.
func TestRedisOutageMidRollout(t *testing.T) {
	const n = 20
	redis := testredis.Durable(t)
	f := ferrytest.Start(t, ferrytest.Redis, func(cfg *server.Config) {
		cfg.RedisURL = redis.URL()
	})
	w := newWorldOn(t, f)
	v2 := w.add(t, "gateway", "2.0.0", 64<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	gate := newTokenGate(w.link)
	w.devices = gate
	fl := w.startFleet(t, "outage", n, "gw-a", sim.Faults{})
	ro := w.createRollout(t, &fleetv1.CreateRolloutRequest{Bundle: v2.bundle(), Selector: "fleet=outage"})

	probe := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"}}}
	defer probe.CloseIdleConnections()
	readiness := func() int {
		resp, err := probe.Get(f.APIURL() + server.ReadinessPath)
		if err != nil {
			t.Fatalf("readiness probe: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := readiness(); code != http.StatusOK {
		t.Fatalf("readiness before the outage: %d", code)
	}

	eventually(t, "every device waits for its download token", func() bool { r, _ := gate.counts(); return r == n })
	redis.Kill(t)
	eventually(t, "readiness 503 with Redis down", func() bool { return readiness() == http.StatusServiceUnavailable })
	_, err := w.rollouts(t).GetRollout(t.Context(), connect.NewRequest(&fleetv1.GetRolloutRequest{RolloutId: ro.GetId()}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("GetRollout with Redis down: %v, want unavailable", err)
	}
	_, err = w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: fl.IDs[0]}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("GetDevice with Redis down: %v, want unavailable", err)
	}
	close(gate.open)
	eventually(t, "every device refused its token as Unavailable", func() bool { _, u := gate.counts(); return u == n })
	redis.Restart(t)
	eventually(t, "readiness 200 with Redis back", func() bool { return readiness() == http.StatusOK })

	end := w.waitRollout(t, ro.GetId(), "ended", func(r *fleetv1.Rollout) bool { return r.GetEndTime() != nil })
	if end.GetState() != "COMPLETED" || end.GetCounts()["SUCCEEDED"] != n {
		t.Errorf("rollout ended %s (%s) with %v, want COMPLETED with %d SUCCEEDED", end.GetState(), end.GetStateReason(), end.GetCounts(), n)
	}
	execs, err := w.rollouts(t).ListRolloutExecutions(t.Context(), connect.NewRequest(&fleetv1.ListRolloutExecutionsRequest{RolloutId: ro.GetId()}))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(execs.Msg.GetExecutions()); got != n {
		t.Errorf("%d executions, want %d", got, n)
	}
	for _, e := range execs.Msg.GetExecutions() {
		if e.GetStatus() != "SUCCEEDED" || e.GetAttempts() != 1 {
			t.Errorf("execution of %s: %s after %d attempts (%s), want SUCCEEDED at the first", e.GetDeviceId(), e.GetStatus(), e.GetAttempts(), e.GetMessage())
		}
	}
	for _, id := range fl.IDs {
		for _, ev := range w.history(t, id) {
			if ev.GetStatus() == devicev1.JobStatus_JOB_STATUS_FAILED || ev.GetErrorCode() == agent.CodeDownloadToken {
				t.Errorf("%s: %s event %v %q (%s) in its history", id, ev.GetKind(), ev.GetStatus(), ev.GetErrorCode(), ev.GetMessage())
			}
		}
	}
	if !t.Failed() {
		w.waitRunning(t, fl.IDs, v2.path)
	}
}

// history returns every event of the device's history.
func (w *world) history(t *testing.T, id string) []*fleetv1.DeviceEvent {
	t.Helper()
	var out []*fleetv1.DeviceEvent
	for page := ""; ; {
		resp, err := w.fleet.ListDeviceEvents(t.Context(), connect.NewRequest(&fleetv1.ListDeviceEventsRequest{DeviceId: id, PageToken: page}))
		if err != nil {
			t.Fatalf("ListDeviceEvents %s: %v", id, err)
		}
		out = append(out, resp.Msg.GetEvents()...)
		if page = resp.Msg.GetNextPageToken(); page == "" {
			return out
		}
	}
}
