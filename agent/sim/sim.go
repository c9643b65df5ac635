// Package sim runs a fleet of simulated devices in one process. Each
// device is a real agent.Agent with its own key, certificate and mutual-TLS
// stream to ferryd; only the hardware is simulated: an in-memory A/B
// installer, a health check, and a reboot that restarts the agent. Faults
// (download, verification, install and health check failures, interrupted
// downloads) are injected at given rates, and every step may be delayed.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryhq/ferry/agent"
)

// Faults are the rates (0 to 1) at which each job meets a failure.
type Faults struct {
	// Download: every download attempt of the job fails (HTTP 503).
	Download float64
	// Verify: the bundle's bytes are altered in transit (one byte
	// flipped), so verification must refuse it.
	Verify float64
	// Install: the installer fails.
	Install float64
	// Health: the health check after the reboot fails.
	Health float64
	// Interrupt: the first download attempt is cut halfway; the agent
	// resumes it with Range.
	Interrupt float64
}

// Registrar adds a device and returns its enrollment token.
type Registrar interface {
	AddDevice(ctx context.Context, id string, labels map[string]string) (string, error)
}

// Config shapes a simulated fleet.
type Config struct {
	// Devices is how many devices to run; their ids are Prefix followed by
	// a number ("sim-00001").
	Devices int
	Prefix  string
	// Labels every device is added with.
	Labels map[string]string
	// Link reaches ferryd; Enroller and Registrar enroll each device with
	// a fresh key and a one-time token.
	Link      agent.Link
	Enroller  agent.Enroller
	Registrar Registrar
	// TrustedRoot is the TUF root the devices ship with.
	TrustedRoot []byte
	// Hardware of every device; a comma-separated list gives the devices
	// these models in turn ("gw1,gw2": every other device is a gw2).
	Hardware string
	Faults   Faults
	// StepDelay is added to download, install, reboot and health check.
	StepDelay time.Duration
	// Dir holds the devices' partial downloads (and their slots, with
	// KeepBundles).
	Dir string
	// KeepBundles makes each device keep the bytes of the bundles it
	// installs in its two slots, as files under Dir, so that it can apply
	// signed patches from the bundle it runs (delta updates). Without it a
	// slot holds only a digest, and devices always download full bundles.
	KeepBundles bool
	// EnrollConcurrency bounds parallel enrollments (default 16).
	EnrollConcurrency int
	// Seed makes fault injection repeatable (0: random).
	Seed uint64
	// MinBackoff and MaxBackoff of each agent's reconnects.
	MinBackoff, MaxBackoff time.Duration
	// DownloadAttempts and DownloadBackoff of each agent.
	DownloadAttempts int
	DownloadBackoff  time.Duration
	// RefuseAfter: a device that ferryd refuses this many times in a row
	// (agent.ErrRefused: revoked, unknown, or certificates no longer
	// trusted) stops retrying and is listed in Refused (default 3).
	RefuseAfter int
	// Consent answers the devices' requests for consent (nil: devices have
	// no consent hook); see SimulatedConsent.
	Consent agent.Consenter
	Logger  *slog.Logger
}

// Stats counts what happened in the fleet.
type Stats struct {
	Enrolled, Running atomic.Int64
	// Connected counts devices whose stream is open; Refused, devices
	// that stopped because ferryd refuses them.
	Connected, Refused                 atomic.Int64
	Restarts                           atomic.Int64
	Installs, Commits, Rollbacks       atomic.Int64
	RangeRequests, Interrupted         atomic.Int64
	Tampered, FailedDownloads          atomic.Int64
	InjectedInstall, InjectedUnhealthy atomic.Int64
	// Patched counts installs of a bundle made from a signed patch;
	// Downloaded, the bytes of targets (bundles and patches) received.
	Patched, Downloaded atomic.Int64
}

// Fleet is a running simulated fleet.
type Fleet struct {
	cfg     Config
	Stats   Stats
	IDs     []string
	wg      sync.WaitGroup
	errOnce sync.Once
	err     error

	mu      sync.Mutex
	refused []Refusal
}

// Refusal is a device that stopped because ferryd refuses it.
type Refusal struct {
	ID string
	// Err is the last refusal.
	Err error
}

// Refused returns the devices that stopped because ferryd refuses them,
// in the order they stopped.
func (f *Fleet) Refused() []Refusal {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.refused)
}

// Start registers and enrolls every device, then runs them until ctx
// ends. It returns once every device is enrolled and started.
func Start(ctx context.Context, cfg Config) (*Fleet, error) {
	if cfg.EnrollConcurrency <= 0 {
		cfg.EnrollConcurrency = 16
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "sim-"
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	if cfg.RefuseAfter <= 0 {
		cfg.RefuseAfter = 3
	}
	f := &Fleet{cfg: cfg, IDs: make([]string, cfg.Devices)}
	width := len(fmt.Sprint(cfg.Devices))
	sem := make(chan struct{}, cfg.EnrollConcurrency)
	errs := make(chan error, 1)
	var enrolling sync.WaitGroup
	for i := range cfg.Devices {
		id := fmt.Sprintf("%s%0*d", cfg.Prefix, max(width, 5), i+1)
		f.IDs[i] = id
		select {
		case sem <- struct{}{}:
		case err := <-errs:
			enrolling.Wait()
			return nil, err
		case <-ctx.Done():
			enrolling.Wait()
			return nil, ctx.Err()
		}
		enrolling.Go(func() {
			defer func() { <-sem }()
			d, err := f.enroll(ctx, id, uint64(i))
			if err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
			f.Stats.Enrolled.Add(1)
			f.wg.Go(func() { f.run(ctx, d) })
		})
	}
	enrolling.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	return f, nil
}

// Wait waits for every device to stop (after ctx ends) and returns the
// first error a device stopped with.
func (f *Fleet) Wait() error {
	f.wg.Wait()
	return f.err
}

// device is one simulated device: its credentials, disk and hardware.
type device struct {
	id    string
	creds *agent.Credentials
	store *agent.MemoryStore
	hw    *hardware
	link  *faultLink
	dir   string
	model string // hardware model
	// stop ends the device's agent; refusals counts ferryd's refusals in
	// a row.
	stop     context.CancelFunc
	refusals atomic.Int64
	stopOnce sync.Once
}

func (f *Fleet) enroll(ctx context.Context, id string, n uint64) (*device, error) {
	token, err := f.cfg.Registrar.AddDevice(ctx, id, f.cfg.Labels)
	if err != nil {
		return nil, err
	}
	key, err := agent.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := agent.CSR(key)
	if err != nil {
		return nil, err
	}
	chain, err := f.cfg.Enroller.Enroll(ctx, csr, token)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", id, err)
	}
	creds, err := agent.NewCredentials(key, chain)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", id, err)
	}
	rng := rand.New(rand.NewPCG(f.cfg.Seed, n))
	d := &device{id: id, creds: creds, store: &agent.MemoryStore{}, dir: filepath.Join(f.cfg.Dir, id), model: f.hardwareOf(n)}
	d.hw = &hardware{f: f, rng: rng, slots: [2]string{}, booted: 0, confirmed: 0}
	if f.cfg.KeepBundles {
		d.hw.keep = filepath.Join(f.cfg.Dir, id+".slots")
	}
	d.link = &faultLink{Link: f.cfg.Link, f: f, hw: d.hw, d: d}
	return d, nil
}

// hardwareOf is the hardware model of the fleet's device number n: the
// models of Config.Hardware in turn.
func (f *Fleet) hardwareOf(n uint64) string {
	models := strings.Split(f.cfg.Hardware, ",")
	return strings.TrimSpace(models[n%uint64(len(models))])
}

// run runs a device's agent, restarting it after each simulated reboot.
func (f *Fleet) run(ctx context.Context, d *device) {
	ctx, d.stop = context.WithCancel(ctx)
	defer d.stop()
	f.Stats.Running.Add(1)
	defer f.Stats.Running.Add(-1)
	defer os.RemoveAll(d.dir)
	var installer agent.Installer = d.hw
	if d.hw.keep != "" {
		defer os.RemoveAll(d.hw.keep)
		installer = keptSlots{d.hw}
	}
	for ctx.Err() == nil {
		a, err := agent.New(agent.Config{
			Link: d.link, Credentials: d.creds, DeviceID: d.id, Store: d.store,
			TrustedRoot: f.cfg.TrustedRoot, Installer: installer, Health: d.hw, Rebooter: d.hw,
			Hardware: d.model, DownloadDir: d.dir, AgentVersion: "ferry-agent/simulated",
			MinBackoff: f.cfg.MinBackoff, MaxBackoff: f.cfg.MaxBackoff,
			DownloadAttempts: f.cfg.DownloadAttempts, DownloadBackoff: f.cfg.DownloadBackoff,
			Consent: f.cfg.Consent, Logger: f.cfg.Logger,
		})
		if err == nil {
			err = a.Run(ctx)
		}
		if errors.Is(err, agent.ErrRestart) {
			f.Stats.Restarts.Add(1)
			continue
		}
		if err != nil {
			f.errOnce.Do(func() { f.err = fmt.Errorf("device %s: %w", d.id, err) })
		}
		return
	}
}

// hardware is a simulated device's A/B slots, health and reboot. Each job
// draws its faults once, when its download client is made.
type hardware struct {
	f   *Fleet
	mu  sync.Mutex
	rng *rand.Rand
	// slots hold the installed bundles' digests; with keep set, their
	// bytes are in the files keep/a and keep/b too.
	slots             [2]string
	booted, confirmed int
	keep              string
	// method is how the current job fetched its bundle, as its last
	// Progress said.
	method agent.DownloadMethod
	// The faults drawn for the current job.
	failDownload, tamper, interrupt, failInstall, unhealthy bool
}

func (h *hardware) draw() {
	h.mu.Lock()
	defer h.mu.Unlock()
	fl := h.f.cfg.Faults
	h.failDownload = h.rng.Float64() < fl.Download
	h.tamper = h.rng.Float64() < fl.Verify
	h.interrupt = h.rng.Float64() < fl.Interrupt
	h.failInstall = h.rng.Float64() < fl.Install
	h.unhealthy = h.rng.Float64() < fl.Health
}

func (h *hardware) delay(ctx context.Context) error {
	if h.f.cfg.StepDelay <= 0 {
		return nil
	}
	t := time.NewTimer(h.f.cfg.StepDelay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Install implements agent.Installer: the bundle goes to the slot not
// confirmed, and the boot pointer moves to it.
func (h *hardware) Install(ctx context.Context, job agent.Job) error {
	if err := h.delay(ctx); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failInstall {
		h.f.Stats.InjectedInstall.Add(1)
		return errors.New("simulated install failure: slot write error")
	}
	other := 1 - h.confirmed
	if h.keep != "" {
		if err := copyFile(ctx, job.Path, h.slotFile(other)); err != nil {
			return fmt.Errorf("simulated slot write: %w", err)
		}
	}
	h.f.Stats.Installs.Add(1)
	if h.method == agent.MethodDelta {
		h.f.Stats.Patched.Add(1)
	}
	h.slots[other] = job.Bundle.SHA256
	h.booted = other
	return nil
}

func (h *hardware) slotFile(slot int) string { return filepath.Join(h.keep, []string{"a", "b"}[slot]) }

// keptSlots is the hardware of a device that keeps its bundles' bytes: it
// can give the agent the running bundle's file, to apply patches to.
type keptSlots struct{ *hardware }

// OpenBase implements agent.BaseOpener.
func (k keptSlots) OpenBase(context.Context, agent.Bundle) (*os.File, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return os.Open(k.slotFile(k.confirmed))
}

// copyFile writes the file from to the file to.
func copyFile(ctx context.Context, from, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return err
	}
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := ctx.Err(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Commit implements agent.Installer.
func (h *hardware) Commit(context.Context, agent.Job) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.f.Stats.Commits.Add(1)
	h.confirmed = h.booted
	return nil
}

// Rollback implements agent.Installer.
func (h *hardware) Rollback(context.Context, agent.Job) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.f.Stats.Rollbacks.Add(1)
	h.booted = h.confirmed
	return nil
}

// Check implements agent.HealthChecker.
func (h *hardware) Check(ctx context.Context, _ agent.Job) error {
	if err := h.delay(ctx); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.unhealthy {
		h.f.Stats.InjectedUnhealthy.Add(1)
		return errors.New("simulated health check failure: service did not start")
	}
	return nil
}

// Reboot implements agent.Rebooter: the agent restarts in-process.
func (h *hardware) Reboot(ctx context.Context, _ agent.Job) error {
	if err := h.delay(ctx); err != nil {
		return err
	}
	return agent.ErrRestart
}

// faultLink injects download faults into the device's HTTP client, and
// watches its streams: which are open, and whether ferryd refuses the
// device.
type faultLink struct {
	agent.Link
	f  *Fleet
	hw *hardware
	d  *device
}

// Dial implements agent.Link.
func (l *faultLink) Dial(ctx context.Context, creds *agent.Credentials) (agent.Conn, error) {
	c, err := l.Link.Dial(ctx, creds)
	if err != nil {
		l.f.refusal(l.d, err)
		return nil, err
	}
	return &watchedConn{Conn: c, f: l.f, d: l.d}, nil
}

// refusal counts err against d when it is a refusal, and stops d after
// RefuseAfter refusals in a row; any other outcome starts the count over.
func (f *Fleet) refusal(d *device, err error) {
	if !errors.Is(err, agent.ErrRefused) {
		d.refusals.Store(0)
		return
	}
	if d.refusals.Add(1) < int64(f.cfg.RefuseAfter) {
		return
	}
	d.stopOnce.Do(func() {
		f.mu.Lock()
		f.refused = append(f.refused, Refusal{ID: d.id, Err: err})
		f.mu.Unlock()
		f.Stats.Refused.Add(1)
		f.cfg.Logger.Info("ferryd refuses the device; it stops retrying", "device", d.id, "err", err)
		d.stop()
	})
}

// watchedConn counts the device's open stream in Stats.Connected.
type watchedConn struct {
	agent.Conn
	f    *Fleet
	d    *device
	mu   sync.Mutex
	open bool
}

func (c *watchedConn) Sync(ctx context.Context, hello agent.Hello) (agent.Stream, error) {
	s, err := c.Conn.Sync(ctx, hello)
	c.f.refusal(c.d, err)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if !c.open {
		c.open = true
		c.f.Stats.Connected.Add(1)
	}
	c.mu.Unlock()
	return &watchedStream{Stream: s, c: c}, nil
}

// closed marks the stream ended (once).
func (c *watchedConn) closed() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open {
		c.open = false
		c.f.Stats.Connected.Add(-1)
	}
}

func (c *watchedConn) Close() error {
	c.closed()
	return c.Conn.Close()
}

type watchedStream struct {
	agent.Stream
	c *watchedConn
}

// SendProgress tells the hardware how the job fetched its bundle.
func (s *watchedStream) SendProgress(p agent.Progress) error {
	hw := s.c.d.hw
	hw.mu.Lock()
	hw.method = p.Download.Method
	hw.mu.Unlock()
	return s.Stream.SendProgress(p)
}

func (s *watchedStream) Recv() (agent.Event, error) {
	ev, err := s.Stream.Recv()
	if err != nil {
		s.c.closed()
		if errors.Is(err, agent.ErrRefused) {
			s.c.f.refusal(s.c.d, err) // ended by ferryd: revoked while connected
		}
	}
	return ev, err
}

func (l *faultLink) HTTPClient(creds *agent.Credentials) *http.Client {
	c := l.Link.HTTPClient(creds)
	l.hw.draw() // one client per job: the job's faults
	l.hw.mu.Lock()
	ft := &faultTransport{base: c.Transport, f: l.f, fail: l.hw.failDownload, tamper: l.hw.tamper, interrupt: l.hw.interrupt}
	l.hw.mu.Unlock()
	return &http.Client{Transport: ft}
}

type faultTransport struct {
	base                    http.RoundTripper
	f                       *Fleet
	fail, tamper, interrupt bool
	mu                      sync.Mutex
	cut                     bool
}

// CloseIdleConnections lets the agent free the job's connections.
func (t *faultTransport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func (t *faultTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.Contains(req.URL.Path, "/tuf/targets/") {
		return t.base.RoundTrip(req)
	}
	if req.Header.Get("Range") != "" {
		t.f.Stats.RangeRequests.Add(1)
	}
	if t.fail {
		t.f.Stats.FailedDownloads.Add(1)
		return &http.Response{StatusCode: http.StatusServiceUnavailable, Status: "503 Service Unavailable (simulated)",
			Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}, Request: req}, nil
	}
	if t.f.cfg.StepDelay > 0 {
		select {
		case <-time.After(t.f.cfg.StepDelay):
		case <-req.Context().Done():
			return nil, req.Context().Err()
		}
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil || resp.StatusCode/100 != 2 {
		return resp, err
	}
	t.mu.Lock()
	cut := t.interrupt && !t.cut
	t.cut = t.cut || cut
	t.mu.Unlock()
	resp.Body = &countedBody{ReadCloser: resp.Body, n: &t.f.Stats.Downloaded}
	switch {
	case cut:
		t.f.Stats.Interrupted.Add(1)
		resp.Body = &cutBody{ReadCloser: resp.Body, left: max(resp.ContentLength/2, 1)}
	case t.tamper:
		t.f.Stats.Tampered.Add(1)
		resp.Body = &tamperBody{ReadCloser: resp.Body}
	}
	return resp, nil
}

// countedBody adds the bytes read to n.
type countedBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countedBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// cutBody ends with an error after left bytes, as a dropped connection.
type cutBody struct {
	io.ReadCloser
	left int64
}

func (c *cutBody) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.ReadCloser.Read(p)
	c.left -= int64(n)
	return n, err
}

// tamperBody flips the first byte it reads.
type tamperBody struct {
	io.ReadCloser
	done bool
}

func (t *tamperBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if n > 0 && !t.done {
		p[0] ^= 0xff
		t.done = true
	}
	return n, err
}
