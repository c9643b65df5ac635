package sim_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/agent/sim"
	"github.com/ferryhq/ferry/agent/transport"
	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// world is a real ferryd (embedded store) with a published TUF repository
// and the release engineer who holds its offline keys.
type world struct {
	f     *ferrytest.Ferryd
	repo  repositoryv1connect.RepositoryServiceClient
	fleet fleetv1connect.FleetServiceClient
	rel   *tuftest.Release
	link  *transport.Link
	// devices is the link the simulated devices reach ferryd through (nil:
	// link).
	devices agent.Link
}

// published is a bundle in the repository.
type published struct {
	path string
	data []byte
}

func (p published) bundle() *devicev1.Bundle {
	return &devicev1.Bundle{TargetPath: p.path, Length: uint64(len(p.data)), Sha256: tuftest.SHA256(p.data)}
}

func newWorld(t *testing.T) *world {
	t.Helper()
	return newWorldOn(t, ferrytest.Start(t, ferrytest.Embedded, nil))
}

// newWorldOn is newWorld on a ferryd of the caller's.
func newWorldOn(t *testing.T, f *ferrytest.Ferryd) *world {
	t.Helper()
	w := &world{f: f, fleet: f.Fleet(t)}
	w.repo = repositoryv1connect.NewRepositoryServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
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
	w.publish(t, w.rel.Init()[0])
	w.link = transport.New(transport.Config{
		DeviceAddr: f.DeviceAddr(), APIURL: f.APIURL(), RootCAs: f.CAPool(t), ServerName: "localhost", SmallBuffers: true,
	})
	return w
}

func (w *world) publish(t *testing.T, md tuf.SignedMetadata) {
	t.Helper()
	if _, err := w.repo.PublishTargets(t.Context(), connect.NewRequest(&repositoryv1.PublishTargetsRequest{Role: md.Role, Metadata: md.Data})); err != nil {
		t.Fatalf("PublishTargets: %v", err)
	}
}

// add uploads a bundle of size random bytes and publishes it with Ferry's
// custom metadata.
func (w *world) add(t *testing.T, name, version string, size int, info tuf.BundleInfo) published {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	return w.addData(t, name, version, data, info)
}

// addData uploads data and publishes it with Ferry's custom metadata.
func (w *world) addData(t *testing.T, name, version string, data []byte, info tuf.BundleInfo) published {
	t.Helper()
	path := name + "/" + version + "/fw.bin"
	w.upload(t, data)
	info.Name, info.Version, info.Published = name, version, time.Now().UTC().Truncate(time.Second)
	tf, err := tuf.NewTargetFile(path, int64(len(data)), tuftest.SHA256(data), info)
	if err != nil {
		t.Fatal(err)
	}
	w.publish(t, w.rel.Edit(path, func(m map[string]*metadata.TargetFiles) { m[path] = tf }))
	return published{path: path, data: data}
}

// upload uploads data to ferryd's blob store.
func (w *world) upload(t *testing.T, data []byte) {
	t.Helper()
	size := len(data)
	stream := w.repo.UploadBlob(t.Context())
	stream.RequestHeader().Set("Authorization", "Bearer "+w.f.OperatorToken(t))
	if err := stream.Send(&repositoryv1.UploadBlobRequest{Message: &repositoryv1.UploadBlobRequest_Info{Info: &repositoryv1.BlobInfo{Length: uint64(size), Sha256: tuftest.SHA256(data)}}}); err != nil {
		t.Fatal(err)
	}
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 64<<10)
		if err := stream.Send(&repositoryv1.UploadBlobRequest{Message: &repositoryv1.UploadBlobRequest_Chunk{Chunk: rest[:n]}}); err != nil {
			break
		}
		rest = rest[n:]
	}
	if _, err := stream.CloseAndReceive(); err != nil {
		t.Fatalf("UploadBlob: %v", err)
	}
}

// startFleet runs n simulated devices labeled fleet=<label>.
func (w *world) startFleet(t *testing.T, label string, n int, hardware string, faults sim.Faults) *sim.Fleet {
	t.Helper()
	return w.startFleetAs(t, label+"-", label, n, hardware, faults)
}

// startFleetAs runs n simulated devices named prefix<number> and labeled
// fleet=<label>.
func (w *world) startFleetAs(t *testing.T, prefix, label string, n int, hardware string, faults sim.Faults) *sim.Fleet {
	t.Helper()
	return w.startFleetWith(t, prefix, label, n, hardware, faults, nil)
}

// startFleetWith is startFleetAs with a change to the fleet's
// configuration.
func (w *world) startFleetWith(t *testing.T, prefix, label string, n int, hardware string, faults sim.Faults, edit func(*sim.Config)) *sim.Fleet {
	t.Helper()
	var link agent.Link = w.link
	if w.devices != nil {
		link = w.devices
	}
	ctx, cancel := context.WithCancel(context.Background())
	cfg := sim.Config{
		Devices: n, Prefix: prefix, Labels: map[string]string{"fleet": label},
		Link: link, Enroller: transport.Enroller{Link: w.link}, Registrar: transport.NewRegistrar(w.link, w.f.OperatorToken(t)),
		TrustedRoot: w.rel.RootJSON(), Hardware: hardware, Faults: faults, Dir: t.TempDir(), Seed: 1,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		DownloadAttempts: 3, DownloadBackoff: 20 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	}
	if edit != nil {
		edit(&cfg)
	}
	fl, err := sim.Start(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("start fleet: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := fl.Wait(); err != nil {
			t.Errorf("fleet: %v", err)
		}
	})
	return fl
}

// setDesired sets the desired document of every device of the fleet and
// waits until each has reported on it; it returns the devices.
func (w *world) setDesired(t *testing.T, fl *sim.Fleet, label string, doc *devicev1.DesiredDocument) []*fleetv1.Device {
	t.Helper()
	resp, err := w.fleet.SetDesiredState(t.Context(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{Selector: "fleet=" + label, Document: doc}))
	if err != nil {
		t.Fatalf("SetDesiredState: %v", err)
	}
	if got := resp.Msg.GetDevicesUpdated(); got != uint64(len(fl.IDs)) {
		t.Fatalf("SetDesiredState updated %d devices, want %d", got, len(fl.IDs))
	}
	return w.wait(t, fl.IDs)
}

// wait waits until each device has reported on its desired version.
func (w *world) wait(t *testing.T, ids []string) []*fleetv1.Device {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	out := make([]*fleetv1.Device, len(ids))
	for i, id := range ids {
		for {
			r, err := w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id}))
			if err != nil {
				t.Fatalf("GetDevice %s: %v", id, err)
			}
			d := r.Msg.GetDevice()
			if j := d.GetJob(); j.GetDesiredVersion() == d.GetDesired().GetVersion() && final(j.GetStatus()) {
				out[i] = d
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("device %s did not finish its job: %v", id, d.GetJob())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return out
}

func final(s devicev1.JobStatus) bool {
	switch s {
	case devicev1.JobStatus_JOB_STATUS_SUCCEEDED, devicev1.JobStatus_JOB_STATUS_FAILED,
		devicev1.JobStatus_JOB_STATUS_ROLLED_BACK, devicev1.JobStatus_JOB_STATUS_REJECTED:
		return true
	}
	return false
}

// verifyAttestation checks the device's signed report for job against the
// device CA and returns its predicate.
func (w *world) verifyAttestation(t *testing.T, d *fleetv1.Device) attest.Report {
	t.Helper()
	r, err := w.fleet.GetAttestation(t.Context(), connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: d.GetId(), JobId: d.GetJob().GetId()}))
	if err != nil {
		t.Fatalf("GetAttestation %s: %v", d.GetId(), err)
	}
	st, _, err := attest.Verify(r.Msg.GetEnvelope(), r.Msg.GetCertificateChain(), w.f.CAPool(t), w.f.Config().TrustDomain, time.Now())
	if err != nil {
		t.Fatalf("attestation of %s does not verify: %v", d.GetId(), err)
	}
	if st.Predicate.Device != d.GetId() || st.Predicate.JobID != d.GetJob().GetId() {
		t.Fatalf("attestation of %s is about %s job %s", d.GetId(), st.Predicate.Device, st.Predicate.JobID)
	}
	return st.Predicate
}

type step struct {
	// bundle to install (nil: configuration only).
	bundle *published
	forced bool
	config map[string]string
	// What every device ends with.
	status   devicev1.JobStatus
	jobStep  devicev1.Step
	code     string
	runs     *published // the reported bundle after the job (nil: none)
	checkFun func(t *testing.T, fl *sim.Fleet)
}

// TestFleetUpdate runs simulated fleets against a real ferryd: each device
// enrolls, holds its mTLS stream, downloads through go-tuf's updater with a
// download token, verifies, installs, reboots, confirms and sends a signed
// report; failures are injected and must be recorded with step and code.
func TestFleetUpdate(t *testing.T) {
	w := newWorld(t)
	v1 := w.add(t, "gateway", "1.0.0", 40<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}, DowngradeAllowed: true})
	v2 := w.add(t, "gateway", "2.0.0", 96<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	v1unsigned := w.add(t, "gateway", "1.5.0", 8<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	rc9 := w.add(t, "gateway", "3.0.0-rc.9", 8<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	rc10 := w.add(t, "gateway", "3.0.0-rc.10", 8<<10, tuf.BundleInfo{Hardware: []string{"gw-a"}})
	const n = 6
	tests := []struct {
		name     string
		hardware string
		faults   sim.Faults
		steps    []step
	}{
		{name: "every device updates to v2", hardware: "gw-a", steps: []step{
			{bundle: &v2, config: map[string]string{"log.level": "debug"}, status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, runs: &v2},
		}},
		{name: "interrupted downloads resume with Range", hardware: "gw-a", faults: sim.Faults{Interrupt: 1}, steps: []step{
			{bundle: &v2, status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, runs: &v2, checkFun: func(t *testing.T, fl *sim.Fleet) {
				if got := fl.Stats.Interrupted.Load(); got != n {
					t.Errorf("%d downloads interrupted, want %d", got, n)
				}
				if got := fl.Stats.RangeRequests.Load(); got < n {
					t.Errorf("%d Range requests, want at least %d (one resume per device)", got, n)
				}
			}},
		}},
		{name: "tampered blobs are refused before install", hardware: "gw-a", faults: sim.Faults{Verify: 1}, steps: []step{
			{bundle: &v2, status: devicev1.JobStatus_JOB_STATUS_FAILED, jobStep: devicev1.Step_STEP_VERIFYING, code: agent.CodeHashMismatch,
				checkFun: func(t *testing.T, fl *sim.Fleet) {
					if got := fl.Stats.Installs.Load(); got != 0 {
						t.Errorf("%d tampered bundles installed", got)
					}
				}},
		}},
		{name: "failed downloads", hardware: "gw-a", faults: sim.Faults{Download: 1}, steps: []step{
			{bundle: &v2, status: devicev1.JobStatus_JOB_STATUS_FAILED, jobStep: devicev1.Step_STEP_DOWNLOADING, code: agent.CodeDownloadFailed},
		}},
		{name: "failed installs", hardware: "gw-a", faults: sim.Faults{Install: 1}, steps: []step{
			{bundle: &v2, status: devicev1.JobStatus_JOB_STATUS_FAILED, jobStep: devicev1.Step_STEP_INSTALLING, code: agent.CodeInstallFailed},
		}},
		{name: "failed health checks roll back", hardware: "gw-a", faults: sim.Faults{Health: 1}, steps: []step{
			{bundle: &v2, status: devicev1.JobStatus_JOB_STATUS_ROLLED_BACK, jobStep: devicev1.Step_STEP_CONFIRMING, code: agent.CodeHealthFailed,
				checkFun: func(t *testing.T, fl *sim.Fleet) {
					if r, c := fl.Stats.Rollbacks.Load(), fl.Stats.Commits.Load(); r != n || c != 0 {
						t.Errorf("%d rollbacks and %d commits, want %d and 0", r, c, n)
					}
				}},
		}},
		{name: "incompatible hardware is rejected", hardware: "gw-b", steps: []step{
			{bundle: &v2, status: devicev1.JobStatus_JOB_STATUS_REJECTED, code: agent.CodeHardwareIncompatible},
		}},
		{name: "downgrades need forced and a signed permission", hardware: "gw-a", steps: []step{
			{bundle: &v2, status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, runs: &v2},
			{bundle: &v1, status: devicev1.JobStatus_JOB_STATUS_REJECTED, code: agent.CodeDowngradeNotForced, runs: &v2},
			{bundle: &v1unsigned, forced: true, status: devicev1.JobStatus_JOB_STATUS_REJECTED, code: agent.CodeDowngradeNotSigned, runs: &v2},
			{bundle: &v1, forced: true, status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, runs: &v1},
		}},
		{name: "versions order by SemVer precedence: rc.9 to rc.10 is an upgrade", hardware: "gw-a", steps: []step{
			{bundle: &rc9, status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, runs: &rc9},
			{bundle: &rc10, status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED, runs: &rc10},
			{bundle: &rc9, status: devicev1.JobStatus_JOB_STATUS_REJECTED, code: agent.CodeDowngradeNotForced, runs: &rc10},
		}},
		{name: "configuration alone is applied and reported", hardware: "gw-a", steps: []step{
			{config: map[string]string{"mode": "eco"}, status: devicev1.JobStatus_JOB_STATUS_SUCCEEDED},
		}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			label := fmt.Sprintf("case%d", i)
			fl := w.startFleet(t, label, n, tc.hardware, tc.faults)
			for _, s := range tc.steps {
				doc := &devicev1.DesiredDocument{Forced: s.forced, Config: s.config}
				if s.bundle != nil {
					doc.Bundle = s.bundle.bundle()
				}
				for _, d := range w.setDesired(t, fl, label, doc) {
					j := d.GetJob()
					if j.GetStatus() != s.status || j.GetStep() != s.jobStep || j.GetErrorCode() != s.code {
						t.Fatalf("device %s: job %v %v %q (%s), want %v %v %q", d.GetId(), j.GetStatus(), j.GetStep(), j.GetErrorCode(), j.GetMessage(), s.status, s.jobStep, s.code)
					}
					if got := d.GetReported().GetState().GetBundle().GetTargetPath(); s.runs != nil && got != s.runs.path || s.runs == nil && got != "" {
						t.Errorf("device %s runs %q, want %v", d.GetId(), got, s.runs)
					}
					p := w.verifyAttestation(t, d)
					if p.Status != agent.Status(0).String() && p.Status != statusName(s.status) {
						t.Errorf("device %s: attested status %s, want %s", d.GetId(), p.Status, statusName(s.status))
					}
					for k, v := range s.config {
						if d.GetReported().GetState().GetConfig()[k] != v {
							t.Errorf("device %s: reported config %v, want %s=%s", d.GetId(), d.GetReported().GetState().GetConfig(), k, v)
						}
					}
				}
				if s.checkFun != nil {
					s.checkFun(t, fl)
				}
			}
			if i == 0 {
				sum, err := w.fleet.GetFleetSummary(t.Context(), connect.NewRequest(&fleetv1.GetFleetSummaryRequest{}))
				if err != nil {
					t.Fatal(err)
				}
				if got := sum.Msg.GetDevicesPerBundle()[v2.path]; got != n {
					t.Errorf("fleet summary: %d devices on %s, want %d (%v)", got, v2.path, n, sum.Msg)
				}
				if got := sum.Msg.GetDevicesPerStatus()["SUCCEEDED"]; got != n {
					t.Errorf("fleet summary: %d devices SUCCEEDED, want %d (%v)", got, n, sum.Msg)
				}
				// Every step of the job is in the device's history, the reboot
				// included: the agent drains its stream before restarting.
				list, err := w.fleet.ListDevices(t.Context(), connect.NewRequest(&fleetv1.ListDevicesRequest{Bundle: v2.path, PageSize: 1}))
				if err != nil || len(list.Msg.GetDevices()) == 0 {
					t.Fatalf("devices on v2: %v, %v", list, err)
				}
				evs, err := w.fleet.ListDeviceEvents(t.Context(), connect.NewRequest(&fleetv1.ListDeviceEventsRequest{DeviceId: list.Msg.GetDevices()[0].GetId()}))
				if err != nil {
					t.Fatal(err)
				}
				var history []string
				for _, ev := range evs.Msg.GetEvents() {
					history = append([]string{ev.GetKind() + ":" + strings.TrimPrefix(ev.GetStep().String(), "STEP_")}, history...)
				}
				want := []string{"desired_set:UNSPECIFIED", "job_progress:DOWNLOADING", "job_progress:VERIFYING", "job_progress:INSTALLING",
					"job_progress:REBOOTING", "job_progress:CONFIRMING", "job_ended:UNSPECIFIED"}
				if strings.Join(history, " ") != strings.Join(want, " ") {
					t.Errorf("history %q, want %q", history, want)
				}
			}
		})
	}
}

func statusName(s devicev1.JobStatus) string {
	return s.String()[len("JOB_STATUS_"):]
}
