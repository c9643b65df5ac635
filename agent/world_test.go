package agent_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/agent/transport"
	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// world is a real ferryd (embedded store) with a TUF repository whose
// offline keys the test holds, and real devices that run agent.Agent
// over agent/transport.
type world struct {
	f     *ferrytest.Ferryd
	repo  repositoryv1connect.RepositoryServiceClient
	fleet fleetv1connect.FleetServiceClient
	rel   *tuftest.Release
	link  *transport.Link
	reg   *transport.Registrar
	mu    sync.Mutex
}

func newWorld(t *testing.T) *world {
	t.Helper()
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	w := &world{f: f, fleet: f.Fleet(t), repo: f.Repository(t)}
	resp, err := w.repo.GetOnlineKeys(t.Context(), connect.NewRequest(&repositoryv1.GetOnlineKeysRequest{}))
	if err != nil {
		t.Fatalf("GetOnlineKeys: %v", err)
	}
	keys := map[string]*metadata.Key{}
	for _, k := range resp.Msg.GetKeys() {
		keys[k.GetRole()] = &metadata.Key{Type: k.GetKeyType(), Scheme: k.GetScheme(), Value: metadata.KeyVal{PublicKey: k.GetPublicKey()}}
	}
	w.rel = tuftest.New(t, keys, tuftest.Options{})
	if _, err := w.repo.PublishRoot(t.Context(), connect.NewRequest(&repositoryv1.PublishRootRequest{Metadata: w.rel.RootJSON()})); err != nil {
		t.Fatalf("PublishRoot: %v", err)
	}
	for _, md := range w.rel.Init() {
		if _, err := w.repo.PublishTargets(t.Context(), connect.NewRequest(&repositoryv1.PublishTargetsRequest{Role: md.Role, Metadata: md.Data})); err != nil {
			t.Fatalf("PublishTargets: %v", err)
		}
	}
	w.link = transport.New(transport.Config{DeviceAddr: f.DeviceAddr(), APIURL: f.APIURL(), RootCAs: f.CAPool(t), ServerName: "localhost"})
	w.reg = transport.NewRegistrar(w.link, f.OperatorToken(t))
	return w
}

// add publishes size random bytes at path and returns the bundle.
func (w *world) add(t *testing.T, path string, size int) *devicev1.Bundle {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	return w.addData(t, path, data)
}

// addData publishes data at path and returns the bundle.
func (w *world) addData(t *testing.T, path string, data []byte) *devicev1.Bundle {
	t.Helper()
	w.upload(t, data)
	w.mu.Lock()
	md := w.rel.Add(path, data)
	w.mu.Unlock()
	if _, err := w.repo.PublishTargets(t.Context(), connect.NewRequest(&repositoryv1.PublishTargetsRequest{Role: md.Role, Metadata: md.Data})); err != nil {
		t.Fatalf("PublishTargets: %v", err)
	}
	return &devicev1.Bundle{TargetPath: path, Length: uint64(len(data)), Sha256: tuftest.SHA256(data)}
}

// upload uploads data to ferryd's blob store.
func (w *world) upload(t *testing.T, data []byte) {
	t.Helper()
	size := len(data)
	stream := w.repo.UploadBlob(t.Context())
	stream.RequestHeader().Set("Authorization", "Bearer "+w.f.OperatorToken(t))
	msgs := []*repositoryv1.UploadBlobRequest{
		{Message: &repositoryv1.UploadBlobRequest_Info{Info: &repositoryv1.BlobInfo{Length: uint64(size), Sha256: tuftest.SHA256(data)}}},
	}
	for rest := data; len(rest) > 0; rest = rest[min(len(rest), 64<<10):] {
		msgs = append(msgs, &repositoryv1.UploadBlobRequest{Message: &repositoryv1.UploadBlobRequest_Chunk{Chunk: rest[:min(len(rest), 64<<10)]}})
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			break // the answer says why
		}
	}
	if _, err := stream.CloseAndReceive(); err != nil {
		t.Fatalf("UploadBlob: %v", err)
	}
}

// device is one device's credentials and disk: its state file, A/B slots
// and downloads, in a directory of its own.
type device struct {
	id    string
	creds *agent.Credentials
	dir   string
	// unhealthy makes the health check fail; checked lists the SHA-256 of
	// the bundle the device booted at each health check.
	unhealthy bool
	mu        sync.Mutex
	checked   []string
	// rebooter, when set, replaces the in-process restart.
	rebooter agent.Rebooter
}

// newDevice adds and enrolls a device with a fresh key.
func (w *world) newDevice(t *testing.T, id string) *device {
	t.Helper()
	token, err := w.reg.AddDevice(t.Context(), id, map[string]string{"fleet": "agent-test"})
	if err != nil {
		t.Fatalf("AddDevice: %v", err)
	}
	key, err := agent.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := agent.CSR(key)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := transport.Enroller{Link: w.link}.Enroll(t.Context(), csr, token)
	if err != nil {
		t.Fatalf("Enroll: %v", err)
	}
	creds, err := agent.NewCredentials(key, chain)
	if err != nil {
		t.Fatal(err)
	}
	return &device{id: id, creds: creds, dir: t.TempDir()}
}

func (d *device) ab() *agent.AB { return &agent.AB{Dir: filepath.Join(d.dir, "slots")} }
func (d *device) store() agent.FileStore {
	return agent.FileStore{Path: filepath.Join(d.dir, "state.json")}
}
func (d *device) downloads() string { return filepath.Join(d.dir, "downloads") }
func (d *device) state(t *testing.T) agent.Persisted {
	t.Helper()
	p, err := d.store().Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Check implements agent.HealthChecker: it records what the device boots.
func (d *device) Check(context.Context, agent.Job) error {
	sha, _ := d.booted()
	d.mu.Lock()
	d.checked = append(d.checked, sha)
	d.mu.Unlock()
	if d.unhealthy {
		return errors.New("service did not start")
	}
	return nil
}

// booted returns the SHA-256 of the bundle in the slot "boot" names ("" for
// none) and whether "boot" and "confirmed" name the same slot.
func (d *device) booted() (sha string, committed bool) {
	ab := d.ab()
	boot, err1 := ab.Booted()
	conf, err2 := ab.Confirmed()
	data, err := os.ReadFile(filepath.Join(ab.Dir, boot, "bundle"))
	if err == nil {
		sum := sha256.Sum256(data)
		sha = hex.EncodeToString(sum[:])
	}
	return sha, err1 == nil && err2 == nil && boot == conf
}

// run runs the device's agent until ctx ends, starting it again after
// every in-process restart, as the device's init would.
func (w *world) run(ctx context.Context, d *device, edit func(*agent.Config)) error {
	for ctx.Err() == nil {
		cfg := agent.Config{
			Link: w.link, Credentials: d.creds, DeviceID: d.id, Store: d.store(), TrustedRoot: w.rel.RootJSON(),
			Installer: d.ab(), Health: d, Rebooter: d.rebooter, DownloadDir: d.downloads(),
			MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
			DownloadAttempts: 3, DownloadBackoff: 10 * time.Millisecond,
			Logger: slog.New(slog.DiscardHandler),
		}
		if edit != nil {
			edit(&cfg)
		}
		a, err := agent.New(cfg)
		if err != nil {
			return err
		}
		if err := a.Run(ctx); !errors.Is(err, agent.ErrRestart) {
			return err
		}
	}
	return nil
}

// setDesired sets the device's desired bundle and configuration and returns
// the desired version.
func (w *world) setDesired(t *testing.T, d *device, b *devicev1.Bundle, config map[string]string) uint64 {
	t.Helper()
	if _, err := w.fleet.SetDesiredState(t.Context(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: d.id, Document: &devicev1.DesiredDocument{Bundle: b, Config: config}})); err != nil {
		t.Fatalf("SetDesiredState: %v", err)
	}
	dev := w.device(t, d)
	return dev.GetDesired().GetVersion()
}

func (w *world) device(t *testing.T, d *device) *fleetv1.Device {
	t.Helper()
	r, err := w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: d.id}))
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	return r.Msg.GetDevice()
}

// settled reports whether ferryd has a final report on desired version
// and the device has nothing left to do or send.
func (w *world) settled(t *testing.T, d *device, version uint64) bool {
	t.Helper()
	dev := w.device(t, d)
	j := dev.GetJob()
	if j.GetDesiredVersion() != version || !final(j.GetStatus()) {
		return false
	}
	p := d.state(t)
	return p.Pending == nil && p.Outbox == nil && p.LastApplied >= version
}

// waitSettled waits for settled, or fails the test after 20 s.
func (w *world) waitSettled(t *testing.T, d *device, version uint64) *fleetv1.Device {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !w.settled(t, d, version) {
		if time.Now().After(deadline) {
			t.Fatalf("device %s did not settle on desired version %d: job %v, state %+v", d.id, version, w.device(t, d).GetJob(), d.state(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return w.device(t, d)
}

// signed returns the predicate of the device's signed report on its last
// job, verified against the device CA.
func (w *world) signed(t *testing.T, dev *fleetv1.Device) attest.Report {
	t.Helper()
	r, err := w.fleet.GetAttestation(t.Context(), connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: dev.GetId(), JobId: dev.GetJob().GetId()}))
	if err != nil {
		t.Fatalf("GetAttestation %s: %v", dev.GetId(), err)
	}
	st, _, err := attest.Verify(r.Msg.GetEnvelope(), r.Msg.GetCertificateChain(), w.f.CAPool(t), w.f.Config().TrustDomain, time.Now())
	if err != nil {
		t.Fatalf("attestation of %s does not verify: %v", dev.GetId(), err)
	}
	return st.Predicate
}

func final(s devicev1.JobStatus) bool {
	switch s {
	case devicev1.JobStatus_JOB_STATUS_SUCCEEDED, devicev1.JobStatus_JOB_STATUS_FAILED,
		devicev1.JobStatus_JOB_STATUS_ROLLED_BACK, devicev1.JobStatus_JOB_STATUS_REJECTED:
		return true
	}
	return false
}

// background runs the device's agent until the returned stop is called.
func (w *world) background(t *testing.T, d *device, edit func(*agent.Config)) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.run(ctx, d, edit) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("agent of %s: %v", d.id, err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("agent of %s did not stop", d.id)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func shortSHA(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return fmt.Sprintf("%q", s)
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
