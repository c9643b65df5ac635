package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// fanout times one SetDesiredState on a selector of every device of ds:
// until the call returns, and until each device has its Delta; then one
// Mosquitto publish (QoS 1) to the same number of subscribers, each its
// own TLS connection (measured before, by mosquittoFanout: the bench
// process cannot hold both sets of connections at full size).
func fanout(ctx context.Context, e *env, f *ferryd, ds *devices, peer *mqttFanout) ([]Row, error) {
	n := len(ds.list)
	before := ds.versions()
	e.logf("fanout: SetDesiredState on fleet=fanout (%d devices)", n)
	t0 := time.Now()
	updated, err := f.setDesired(ctx, "fleet=fanout", map[string]string{"bench.fanout": t0.Format(time.RFC3339Nano)})
	if err != nil {
		return nil, err
	}
	ret := time.Since(t0)
	if int(updated) != n {
		return nil, fmt.Errorf("SetDesiredState updated %d devices of %d", updated, n)
	}
	at, err := ds.waitDeltas(ctx, before, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	lat := make([]time.Duration, n)
	for i, t := range at {
		lat[i] = t.Sub(t0)
	}
	slices.Sort(lat)

	size := group(int64(n))
	return []Row{
		{Scenario: "fanout", What: fmt.Sprintf("SetDesiredState on a selector of %s: the call returns", size), Ferry: ret.Seconds() * 1000, Unit: "ms",
			Peer: "Mosquitto, the QoS 1 publish returns", PeerValue: peer.ret.Seconds() * 1000, Target: "≤ 1 s", Met: atMost(ret.Seconds()*1000, 1000, "ms")},
		{Scenario: "fanout", What: fmt.Sprintf("%s devices: Delta received, p99", size), Ferry: percentile(lat, .99).Seconds() * 1000, Unit: "ms",
			Peer: "Mosquitto, one publish to as many subscribers, p99", PeerValue: percentile(peer.got, .99).Seconds() * 1000,
			Target: "≤ 1 s", Met: atMost(percentile(lat, .99).Seconds()*1000, 1000, "ms")},
		{Scenario: "fanout", What: fmt.Sprintf("%s devices: Delta received, max", size), Ferry: lat[n-1].Seconds() * 1000, Unit: "ms",
			Peer: "Mosquitto, max", PeerValue: peer.got[len(peer.got)-1].Seconds() * 1000},
	}, nil
}

type mqttFanout struct {
	ret time.Duration
	got []time.Duration
}

// mosquittoFanout publishes one message (QoS 1) to n subscribers.
func mosquittoFanout(ctx context.Context, e *env, n int) (*mqttFanout, error) {
	m, err := e.startMosquitto(ctx)
	if err != nil {
		return nil, err
	}
	defer m.p.stop(5 * time.Second)
	e.logf("fanout: %d Mosquitto subscribers", n)
	var (
		mu   sync.Mutex
		pub  time.Time
		got  = make([]time.Duration, n)
		seen = make([]bool, n)
		left = n
		all  = make(chan struct{})
	)
	subs, err := m.connect(ctx, e, "sub", n, "bench/fanout", func(i int) {
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if pub.IsZero() || seen[i] {
			return
		}
		seen[i], got[i] = true, now.Sub(pub)
		if left--; left == 0 {
			close(all)
		}
	})
	if err != nil {
		return nil, err
	}
	defer disconnect(subs)
	pubc, err := m.connect(ctx, e, "pub", 1, "", nil)
	if err != nil {
		return nil, err
	}
	defer disconnect(pubc)
	mu.Lock()
	pub = time.Now()
	mu.Unlock()
	t := pubc[0].Publish("bench/fanout", 1, false, []byte("desired state"))
	t.WaitTimeout(time.Minute)
	pubRet := time.Since(pub)
	select {
	case <-all:
	case <-time.After(2 * time.Minute):
		return nil, fmt.Errorf("mosquitto: %d of %d subscribers got the message", n-left, n)
	}
	slices.Sort(got)
	return &mqttFanout{ret: pubRet, got: got}, nil
}
