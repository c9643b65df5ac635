package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sync/errgroup"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/agent/transport"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

// ferryd is a ferryd process of the bench's own: its data directory, its
// ports and the Redis store it uses. restart keeps all three.
type ferryd struct {
	e                  *env
	dataDir            string
	deviceAddr, apiURL string
	args               []string
	p                  *proc
	caPool             *x509.CertPool
	token              string
	http               *http.Client
	fleet              fleetv1connect.FleetServiceClient
}

func (e *env) startFerryd(ctx context.Context, redisURL string, extra []string) (*ferryd, error) {
	dp, err := freePort()
	if err != nil {
		return nil, err
	}
	ap, err := freePort()
	if err != nil {
		return nil, err
	}
	f := &ferryd{e: e, dataDir: filepath.Join(e.dir, "ferry-data"),
		deviceAddr: fmt.Sprintf("127.0.0.1:%d", dp), apiURL: fmt.Sprintf("https://127.0.0.1:%d", ap)}
	f.args = append([]string{filepath.Join(e.bin, "ferryd"), "--data-dir", f.dataDir,
		"--device-addr", f.deviceAddr, "--api-addr", fmt.Sprintf("127.0.0.1:%d", ap),
		"--redis-url", redisURL, "--redis-prefix", "bench:", "--log-level", "warn",
		"--shutdown-delay", "0s",
		// Every client of the bench comes from 127.0.0.1.
		"--device-max-conns-per-source", "0", "--api-max-conns-per-source", "0"}, extra...)
	if err := f.launch(ctx); err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(f.dataDir, "pki", "ca.pem"))
	if err != nil {
		return nil, err
	}
	f.caPool = x509.NewCertPool()
	f.caPool.AppendCertsFromPEM(ca)
	tok, err := os.ReadFile(filepath.Join(f.dataDir, "pki", "operator.token"))
	if err != nil {
		return nil, err
	}
	f.token = strings.TrimSpace(string(tok))
	f.http = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: f.caPool}, ForceAttemptHTTP2: true}}
	f.fleet = fleetv1connect.NewFleetServiceClient(f.http, f.apiURL)
	return f, nil
}

// launch starts the process and waits until both ports accept.
func (f *ferryd) launch(ctx context.Context) error {
	p, err := f.e.start("ferryd", f.args)
	if err != nil {
		return err
	}
	f.p = p
	if err := waitPort(ctx, p, strings.TrimPrefix(f.apiURL, "https://"), 60*time.Second); err != nil {
		return err
	}
	return waitPort(ctx, p, f.deviceAddr, 10*time.Second)
}

// metric reads one unlabelled gauge or counter from /metrics.
func (f *ferryd) metric(ctx context.Context, name string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.apiURL+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+f.token)
	resp, err := f.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/metrics: %s", resp.Status)
	}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("/metrics has no %s", name)
}

func (f *ferryd) streams(ctx context.Context) (int, error) {
	v, err := f.metric(ctx, "ferry_device_streams")
	return int(v), err
}

// waitStreams waits until ferryd holds at least n streams, and returns
// when that was first seen (polled every 100 ms).
func (f *ferryd) waitStreams(ctx context.Context, n int, timeout time.Duration, alive ...*proc) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	last := -1
	for {
		got, err := f.streams(ctx)
		if err == nil && got >= n {
			return time.Now(), nil
		}
		last = got
		for _, p := range append(alive, f.p) {
			if p.exited() {
				return time.Time{}, fmt.Errorf("%s exited: %v\n%s", p.name, p.err, tail(p.out.String()))
			}
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("ferryd holds %d of %d streams after %s (%v)", last, n, timeout, err)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (f *ferryd) ferryctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(f.e.bin, "ferryctl"), append([]string{
		"--server", f.apiURL, "--ca-file", filepath.Join(f.dataDir, "pki", "ca.pem"),
		"--token-file", filepath.Join(f.dataDir, "pki", "operator.token")}, args...)...)
	cmd.Dir = f.e.dir
	cmd.Env = append(os.Environ(), "FERRY_PASSPHRASE=ferry-bench")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ferryctl %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// initRepo creates the TUF repository (once) and returns its trusted root.
func (f *ferryd) initRepo(ctx context.Context) (string, error) {
	root := filepath.Join(f.e.dir, "ferry-repo", "root.json")
	if _, err := os.Stat(root); err == nil {
		return root, nil
	}
	if _, err := f.ferryctl(ctx, "repo", "init", "--repo-dir", filepath.Join(f.e.dir, "ferry-repo")); err != nil {
		return "", err
	}
	return root, nil
}

func (f *ferryd) setDesired(ctx context.Context, selector string, config map[string]string) (uint64, error) {
	req := connect.NewRequest(&fleetv1.SetDesiredStateRequest{Selector: selector, Document: &devicev1.DesiredDocument{Config: config}})
	req.Header().Set("Authorization", "Bearer "+f.token)
	resp, err := f.fleet.SetDesiredState(ctx, req)
	if err != nil {
		return 0, err
	}
	return resp.Msg.GetDevicesUpdated(), nil
}

func (f *ferryd) setDesiredBundle(ctx context.Context, id string, b *devicev1.Bundle) error {
	req := connect.NewRequest(&fleetv1.SetDesiredStateRequest{DeviceId: id, Document: &devicev1.DesiredDocument{Bundle: b}})
	req.Header().Set("Authorization", "Bearer "+f.token)
	_, err := f.fleet.SetDesiredState(ctx, req)
	return err
}

func (f *ferryd) link() *transport.Link {
	return transport.New(transport.Config{DeviceAddr: f.deviceAddr, APIURL: f.apiURL, RootCAs: f.caPool, SmallBuffers: true})
}

// devices is a fleet of minimal devices in the bench process: each
// enrolled with its own key and certificate, with its own mutual-TLS
// connection and Sync stream; it records when each Delta arrives, signs
// reports on demand and downloads targets. (The simulator runs whole
// agents; these do only what a scenario measures.)
type devices struct {
	f    *ferryd
	link *transport.Link
	list []*device
}

type device struct {
	id    string
	creds *agent.Credentials
	conn  agent.Conn
	st    agent.Stream

	sendMu sync.Mutex
	// The newest Delta: when it came, its version and job.
	mu        sync.Mutex
	deltaAt   time.Time
	deltaVer  uint64
	deltaJob  string
	deltaConf map[string]string
	deltas    chan struct{}
	answers   chan bool
}

// enrollDevices adds, enrolls and connects n devices labelled
// fleet=<label>.
func (f *ferryd) enrollDevices(ctx context.Context, label string, n int) (*devices, error) {
	ds := &devices{f: f, link: f.link(), list: make([]*device, n)}
	reg := transport.NewRegistrar(ds.link, f.token)
	enroller := transport.Enroller{Link: ds.link}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(32)
	for i := range n {
		g.Go(func() error {
			id := fmt.Sprintf("%s-%05d", label, i+1)
			tok, err := reg.AddDevice(gctx, id, map[string]string{"fleet": label})
			if err != nil {
				return err
			}
			key, err := agent.NewKey()
			if err != nil {
				return err
			}
			csr, err := agent.CSR(key)
			if err != nil {
				return err
			}
			chain, err := enroller.Enroll(gctx, csr, tok)
			if err != nil {
				return fmt.Errorf("enroll %s: %w", id, err)
			}
			creds, err := agent.NewCredentials(key, chain)
			if err != nil {
				return err
			}
			d := &device{id: id, creds: creds, deltas: make(chan struct{}, 1), answers: make(chan bool, 4)}
			ds.list[i] = d
			return ds.connect(gctx, d)
		})
	}
	if err := g.Wait(); err != nil {
		ds.close()
		return nil, err
	}
	return ds, nil
}

func (ds *devices) connect(ctx context.Context, d *device) error {
	conn, err := ds.link.Dial(ctx, d.creds)
	if err != nil {
		return err
	}
	st, err := conn.Sync(context.Background(), agent.Hello{AgentVersion: "ferry-bench"})
	if err != nil {
		conn.Close()
		return fmt.Errorf("stream of %s: %w", d.id, err)
	}
	d.conn, d.st = conn, st
	go d.recv()
	return nil
}

func (d *device) send(fn func(agent.Stream) error) error {
	d.sendMu.Lock()
	defer d.sendMu.Unlock()
	return fn(d.st)
}

func (d *device) recv() {
	for {
		ev, err := d.st.Recv()
		if err != nil {
			return
		}
		switch {
		case ev.Ping != 0:
			_ = d.send(func(s agent.Stream) error { return s.Ack(ev.Ping, 0) })
		case ev.Delta != nil:
			now := time.Now()
			d.mu.Lock()
			if ev.Delta.DesiredVersion > d.deltaVer {
				d.deltaAt, d.deltaVer, d.deltaJob, d.deltaConf = now, ev.Delta.DesiredVersion, ev.Delta.JobID, ev.Delta.Desired.Config
			}
			d.mu.Unlock()
			_ = d.send(func(s agent.Stream) error { return s.Ack(0, ev.Delta.DesiredVersion) })
			select {
			case d.deltas <- struct{}{}:
			default:
			}
		case ev.Accepted != nil:
			d.answers <- true
		case ev.Rejected != nil:
			d.answers <- false
		}
	}
}

// delta returns the newest Delta's arrival, version, job and config.
func (d *device) delta() (time.Time, uint64, string, map[string]string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.deltaAt, d.deltaVer, d.deltaJob, d.deltaConf
}

// waitDeltas waits until every device has a Delta of a version above
// before[i]; it returns the arrival times.
func (ds *devices) waitDeltas(ctx context.Context, before []uint64, timeout time.Duration) ([]time.Time, error) {
	at := make([]time.Time, len(ds.list))
	deadline := time.Now().Add(timeout)
	for i, d := range ds.list {
		for {
			t, v, _, _ := d.delta()
			if v > before[i] {
				at[i] = t
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("device %s got no Delta within %s (%d of %d did)", d.id, timeout, i, len(ds.list))
			}
			select {
			case <-d.deltas:
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	return at, nil
}

func (ds *devices) versions() []uint64 {
	v := make([]uint64, len(ds.list))
	for i, d := range ds.list {
		_, v[i], _, _ = d.delta()
	}
	return v
}

func (ds *devices) close() {
	for _, d := range ds.list {
		if d != nil && d.conn != nil {
			d.conn.Close()
		}
	}
}

// errCount counts errors without keeping them all.
type errCount struct {
	n     atomic.Int64
	first atomic.Value
}

func (c *errCount) add(err error) {
	if c.n.Add(1) == 1 {
		c.first.Store(err)
	}
}

func (c *errCount) err() error {
	if c.n.Load() == 0 {
		return nil
	}
	return fmt.Errorf("%d failures, the first: %w", c.n.Load(), c.first.Load().(error))
}

var errNoRows = errors.New("no rows")
