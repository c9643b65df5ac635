package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
)

// streams measures ferryd's RSS per idle device stream with the simulator
// holding the other side, then restarts ferryd and measures the reconnect
// storm; then the same number of idle connections on the grpc-go floor
// and on Mosquitto, and the raw TLS handshake rate.
func streams(ctx context.Context, e *env, f *ferryd, o *Options) ([]Row, error) {
	n := o.Devices
	var rows []Row
	root, err := f.initRepo(ctx)
	if err != nil {
		return nil, err
	}
	settle := o.measure(10 * time.Second)
	before, err := rssKiB(f.p.pid())
	if err != nil {
		return nil, err
	}
	e.logf("streams: %d simulated devices (ferry-agent simulate)", n)
	args := append([]string{filepath.Join(e.bin, "ferry-agent"), "simulate", "-n", fmt.Sprint(n), "--prefix", "idle-",
		"--labels", "fleet=idle", "--device-addr", f.deviceAddr, "--api-url", f.apiURL,
		"--ca-file", filepath.Join(f.dataDir, "pki", "ca.pem"), "--tuf-root", root,
		"--token-file", filepath.Join(f.dataDir, "pki", "operator.token"),
		"--status-every", "30s", "--enroll-concurrency", "32"}, o.SimFlags...)
	sim, err := e.start("ferry-agent simulate", args)
	if err != nil {
		return nil, err
	}
	defer sim.stop(10 * time.Second)
	enrollStart := time.Now()
	if _, err := f.waitStreams(ctx, n, time.Minute+time.Duration(n)*25*time.Millisecond, sim); err != nil {
		return nil, err
	}
	e.logf("streams: %d connected in %s; settling %s", n, time.Since(enrollStart).Round(time.Second), settle)
	sleep(ctx, settle)
	after, err := rssKiB(f.p.pid())
	if err != nil {
		return nil, err
	}
	simRSS, err := rssKiB(sim.pid())
	if err != nil {
		return nil, err
	}
	ferryPer := float64(after-before) / float64(n)
	simPer := float64(simRSS) / float64(n)

	floorPer, err := floorRSS(ctx, e, n, settle)
	if err != nil {
		return nil, fmt.Errorf("grpc-go floor: %w", err)
	}
	mosqPer, err := mosquittoRSS(ctx, e, n, settle)
	if err != nil {
		return nil, fmt.Errorf("mosquitto: %w", err)
	}
	if o.wants("streams") {
		what := fmt.Sprintf("ferryd RSS per idle mTLS stream, %s streams", group(int64(n)))
		rows = append(rows,
			Row{Scenario: "streams", What: what, Ferry: ferryPer, Unit: "KiB", Peer: "minimal grpc-go mTLS bidi server", PeerValue: floorPer,
				Target: "≤ 40 KiB", Met: atMost(ferryPer, 40, "KiB")},
			Row{Scenario: "streams", What: what, Ferry: ferryPer, Unit: "KiB", Peer: "Mosquitto, idle TLS clients", PeerValue: mosqPer,
				Target: "≤ 40 KiB", Met: atMost(ferryPer, 40, "KiB")},
			Row{Scenario: "streams", What: "simulator RSS per simulated device", Ferry: simPer, Unit: "KiB",
				Target: "≤ 40 KiB", Met: atMost(simPer, 40, "KiB")},
		)
	}
	if !o.wants("reconnect") {
		return rows, nil
	}

	// The reconnect storm: SIGTERM with n streams open, then a new ferryd
	// on the same data directory, ports and store.
	e.logf("reconnect: restarting ferryd with %d streams open", n)
	stopped := f.p.stop(30 * time.Second)
	restart := time.Now()
	if err := f.launch(ctx); err != nil {
		return rows, err
	}
	fresh, err := rssKiB(f.p.pid())
	if err != nil {
		return rows, err
	}
	back, err := f.waitStreams(ctx, n, 5*time.Minute, sim)
	if err != nil {
		return rows, err
	}
	storm := back.Sub(restart)
	rate := float64(n) / storm.Seconds()
	hs, err := handshakeRate(ctx, e, o.measure(5*time.Second))
	if err != nil {
		return rows, fmt.Errorf("tls handshakes: %w", err)
	}
	sleep(ctx, settle)
	again, err := rssKiB(f.p.pid())
	if err != nil {
		return rows, err
	}
	againPer := float64(again-fresh) / float64(n)
	rows = append(rows,
		Row{Scenario: "reconnect", What: fmt.Sprintf("devices back per second after a restart, %s devices", group(int64(n))), Ferry: rate, Unit: "/s",
			Peer: "raw Go mTLS handshakes (P-256, TLS 1.3, 16 clients)", PeerValue: hs,
			Target: "≥ 633/s (19,000 in 30 s)", Met: atLeast(rate, 19000.0/30, "/s")},
		Row{Scenario: "reconnect", What: fmt.Sprintf("all %s back, from the restart", group(int64(n))), Ferry: storm.Seconds(), Unit: "s",
			Peer: "raw handshakes at that rate", PeerValue: float64(n) / hs,
			Target: "≤ 30 s", Met: atMost(storm.Seconds(), 30, "s")},
		Row{Scenario: "reconnect", What: fmt.Sprintf("SIGTERM to exit with %s streams open", group(int64(n))), Ferry: stopped.Seconds(), Unit: "s",
			Target: "≤ 5 s", Met: atMost(stopped.Seconds(), 5, "s")},
		Row{Scenario: "reconnect", What: "ferryd RSS per stream after the storm (fresh process, no enrollment)", Ferry: againPer, Unit: "KiB",
			Peer: "minimal grpc-go mTLS bidi server", PeerValue: floorPer,
			Target: "≤ 40 KiB", Met: atMost(againPer, 40, "KiB")},
	)
	return rows, nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// floorRSS holds n idle streams on the minimal grpc-go server (a process
// of its own) and returns its RSS growth per stream. The clients turn
// gRPC's buffers off as the simulator does; the server keeps grpc-go's
// defaults.
func floorRSS(ctx context.Context, e *env, n int, settle time.Duration) (float64, error) {
	p, addr, err := e.startRole(ctx, "grpc-floor")
	if err != nil {
		return 0, err
	}
	defer p.stop(5 * time.Second)
	before, err := rssKiB(p.pid())
	if err != nil {
		return 0, err
	}
	e.logf("streams: %d streams on the grpc-go floor", n)
	conns := make([]*grpc.ClientConn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range n {
		g.Go(func() error {
			cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(e.pki.clientTLS())),
				grpc.WithReadBufferSize(0), grpc.WithWriteBufferSize(0))
			if err != nil {
				return err
			}
			conns[i] = cc
			s, err := devicev1.NewDeviceServiceClient(cc).Sync(context.WithoutCancel(gctx))
			if err != nil {
				return err
			}
			if err := s.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{AgentVersion: "floor"}}}); err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	sleep(ctx, settle)
	after, err := rssKiB(p.pid())
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(n), nil
}

// mosquitto is a Mosquitto broker of the bench's own with one TLS
// listener on loopback that requires client certificates.
type mosquitto struct {
	p    *proc
	addr string
}

func (e *env) startMosquitto(ctx context.Context) (*mosquitto, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(e.dir, fmt.Sprintf("mosquitto-%d.conf", port))
	text := fmt.Sprintf(`per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
log_type error
max_connections -1
max_queued_messages 100000
listener %d 127.0.0.1
cafile %s
certfile %s
keyfile %s
require_certificate true
tls_version tlsv1.3
`, port, e.pki.caFile, e.pki.certFile, e.pki.keyFile)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, err
	}
	p, err := e.start("mosquitto", []string{program("mosquitto"), "-c", conf})
	if err != nil {
		return nil, err
	}
	m := &mosquitto{p: p, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	if err := waitPort(ctx, p, m.addr, 10*time.Second); err != nil {
		return nil, err
	}
	return m, nil
}

// connect opens n MQTT clients, each its own TLS connection (keepalive
// 30 s, clean session); onMessage, when set, subscribes each to topic.
func (m *mosquitto) connect(ctx context.Context, e *env, prefix string, n int, topic string, onMessage func(i int)) ([]mqtt.Client, error) {
	clients := make([]mqtt.Client, n)
	g, _ := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range n {
		g.Go(func() error {
			opts := mqtt.NewClientOptions().AddBroker("ssl://" + m.addr).SetClientID(fmt.Sprintf("%s-%05d", prefix, i)).
				SetTLSConfig(e.pki.clientTLS()).SetKeepAlive(30 * time.Second).SetAutoReconnect(false).
				SetCleanSession(true).SetConnectTimeout(30 * time.Second).SetWriteTimeout(30 * time.Second)
			c := mqtt.NewClient(opts)
			if t := c.Connect(); !t.WaitTimeout(60*time.Second) || t.Error() != nil {
				return fmt.Errorf("mqtt connect %d: %v", i, t.Error())
			}
			clients[i] = c
			if onMessage != nil {
				t := c.Subscribe(topic, 1, func(mqtt.Client, mqtt.Message) { onMessage(i) })
				if !t.WaitTimeout(60*time.Second) || t.Error() != nil {
					return fmt.Errorf("mqtt subscribe %d: %v", i, t.Error())
				}
			}
			return nil
		})
	}
	err := g.Wait()
	if err != nil {
		disconnect(clients)
		return nil, err
	}
	return clients, nil
}

func disconnect(clients []mqtt.Client) {
	var wg sync.WaitGroup
	for _, c := range clients {
		if c != nil {
			wg.Go(func() { c.Disconnect(0) })
		}
	}
	wg.Wait()
}

func mosquittoRSS(ctx context.Context, e *env, n int, settle time.Duration) (float64, error) {
	m, err := e.startMosquitto(ctx)
	if err != nil {
		return 0, err
	}
	defer m.p.stop(5 * time.Second)
	before, err := rssKiB(m.p.pid())
	if err != nil {
		return 0, err
	}
	e.logf("streams: %d idle MQTT clients on Mosquitto", n)
	clients, err := m.connect(ctx, e, "idle", n, "", nil)
	if err != nil {
		return 0, err
	}
	defer disconnect(clients)
	sleep(ctx, settle)
	after, err := rssKiB(m.p.pid())
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(n), nil
}

// handshakeRate is full mutual-TLS handshakes per second against a Go TLS
// server in a process of its own, 16 clients at once, P-256 keys on both
// sides, no session resumption.
func handshakeRate(ctx context.Context, e *env, d time.Duration) (float64, error) {
	p, addr, err := e.startRole(ctx, "tls-handshake")
	if err != nil {
		return 0, err
	}
	defer p.stop(5 * time.Second)
	var done atomic.Int64
	var fails errCount
	end := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				c, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					fails.add(err)
					continue
				}
				tc := tls.Client(c, e.pki.clientTLS())
				_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
				if err := tc.Handshake(); err != nil {
					fails.add(err)
				} else {
					done.Add(1)
				}
				tc.Close()
			}
		})
	}
	wg.Wait()
	if err := fails.err(); err != nil && done.Load() == 0 {
		return 0, err
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}
