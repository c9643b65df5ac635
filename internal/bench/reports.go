package bench

import (
	"context"
	"crypto/x509"
	"encoding/csv"
	"fmt"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/attest"
)

// reports measures signed reports verified and recorded per second by
// ferryd on Redis, over the devices' real streams. Each round gives every
// device a new desired state (one SetDesiredState on the selector); once
// every device has its Delta and has signed its report (the device's
// work, outside the timer), all reports are sent at once and the round
// ends with the last answer. Beside it: DSSE verification alone on every
// core of this machine (the ceiling of a verifying server), and
// redis-benchmark against the same redis-server.
func reports(ctx context.Context, e *env, f *ferryd, ds *devices, redis *redisServer, o *Options) ([]Row, error) {
	n := len(ds.list)
	var (
		total    time.Duration
		accepted int64
		rejected atomic.Int64
	)
	envelopes := make([][]byte, n)
	for round := range o.ReportRounds {
		before := ds.versions()
		if _, err := f.setDesired(ctx, "fleet=fanout", map[string]string{"bench.report": fmt.Sprint(round, time.Now().UnixNano())}); err != nil {
			return nil, err
		}
		if _, err := ds.waitDeltas(ctx, before, 2*time.Minute); err != nil {
			return nil, err
		}
		g, _ := errgroup.WithContext(ctx)
		g.SetLimit(runtime.GOMAXPROCS(0))
		for i, d := range ds.list {
			g.Go(func() error {
				_, v, job, conf := d.delta()
				env, err := agent.SignReport(d.creds, d.id, d.st.Nonce(), agent.Result{JobID: job, DesiredVersion: v,
					Status: agent.StatusSucceeded, State: agent.State{Config: conf}}, time.Now())
				envelopes[i] = env
				return err
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		e.logf("reports: round %d, %d reports", round+1, n)
		start := time.Now()
		var sends errCount
		var wg sync.WaitGroup
		next := make(chan int)
		for range 16 {
			wg.Go(func() {
				for i := range next {
					if err := ds.list[i].send(func(s agent.Stream) error { return s.SendReport(envelopes[i]) }); err != nil {
						sends.add(err)
					}
				}
			})
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		if err := sends.err(); err != nil {
			return nil, err
		}
		timeout := time.After(2 * time.Minute)
		for _, d := range ds.list {
			select {
			case ok := <-d.answers:
				if ok {
					accepted++
				} else {
					rejected.Add(1)
				}
			case <-timeout:
				return nil, fmt.Errorf("reports: no answer for %s within 2 min", d.id)
			}
		}
		total += time.Since(start)
	}
	if r := rejected.Load(); r > 0 {
		return nil, fmt.Errorf("ferryd rejected %d of %d reports", r, int64(n*o.ReportRounds))
	}
	rate := float64(accepted) / total.Seconds()

	// The ceiling: the same envelopes verified on every core, nothing else.
	leafs := make([]*x509.Certificate, n)
	for i, d := range ds.list {
		leafs[i] = d.creds.Leaf()
	}
	td := trustDomain(leafs[0])
	var verified atomic.Int64
	var verifyErr errCount
	d := o.measure(3 * time.Second)
	end := time.Now().Add(d)
	vstart := time.Now()
	var wg sync.WaitGroup
	for w := range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := w; time.Now().Before(end); i = (i + 1) % n {
				if _, err := attest.VerifyByDevice(envelopes[i], leafs[i], td); err != nil {
					verifyErr.add(err)
					return
				}
				verified.Add(1)
			}
		})
	}
	wg.Wait()
	if err := verifyErr.err(); err != nil {
		return nil, err
	}
	ceiling := float64(verified.Load()) / time.Since(vstart).Seconds()

	requests := 200000
	if o.Short {
		requests = 20000
	}
	set, err := redisBenchmark(ctx, redis, requests, "-t", "set")
	if err != nil {
		return nil, err
	}
	eval, err := redisBenchmark(ctx, redis, requests, "EVAL", "redis.call('SET', KEYS[1], ARGV[1]) redis.call('SADD', 'bench:set', KEYS[1]) return 1", "1", "bench:key:__rand_int__", "v")
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("signed reports verified and recorded per second, Redis, %s devices × %d", group(int64(n)), o.ReportRounds)
	return []Row{
		{Scenario: "reports", What: what, Ferry: rate, Unit: "/s", Peer: fmt.Sprintf("DSSE verification alone, %d cores", runtime.GOMAXPROCS(0)),
			PeerValue: ceiling, Target: "≥ 10,000/s", Met: atLeast(rate, 10000, "/s")},
		{Scenario: "reports", What: what, Ferry: rate, Unit: "/s", Peer: "redis-benchmark EVAL (SET + SADD), 50 clients",
			PeerValue: eval, Target: "≥ 10,000/s", Met: atLeast(rate, 10000, "/s")},
		{Scenario: "reports", What: "redis-benchmark SET on the same redis-server, 50 clients", Ferry: set, Unit: "/s"},
	}, nil
}

// trustDomain is the host of the device certificate's SPIFFE ID.
func trustDomain(leaf *x509.Certificate) string {
	for _, u := range leaf.URIs {
		if u.Scheme == "spiffe" {
			return u.Host
		}
	}
	return ""
}

// redisBenchmark runs redis-benchmark with --csv and returns requests per
// second.
func redisBenchmark(ctx context.Context, r *redisServer, requests int, args ...string) (float64, error) {
	cmd := exec.CommandContext(ctx, program("redis-benchmark"), append([]string{"-h", "127.0.0.1", "-p", fmt.Sprint(r.port),
		"-n", fmt.Sprint(requests), "-c", "50", "-r", "100000", "--csv"}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark: %w", err)
	}
	recs, err := csv.NewReader(strings.NewReader(string(out))).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("redis-benchmark output: %w\n%s", err, out)
	}
	for _, rec := range recs {
		if len(rec) >= 2 && rec[0] != "test" {
			if v, err := strconv.ParseFloat(rec[1], 64); err == nil {
				return v, nil
			}
		}
	}
	return 0, fmt.Errorf("redis-benchmark printed no rate:\n%s", out)
}
