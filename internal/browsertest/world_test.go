package browsertest_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/agent/sim"
	"github.com/ferryhq/ferry/agent/transport"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// world is a real ferryd with a TUF repository signed by a release
// engineer's offline keys (tuftest), bundles with Ferry's signed metadata,
// and fleets of simulated devices (agent/sim), each a real agent with its
// own mutual-TLS stream.
type world struct {
	f        *ferrytest.Ferryd
	fleet    fleetv1connect.FleetServiceClient
	rollouts fleetv1connect.RolloutServiceClient
	repo     repositoryv1connect.RepositoryServiceClient
	rel      *tuftest.Release
	link     *transport.Link
}

func newWorld(t *testing.T, f *ferrytest.Ferryd) *world {
	t.Helper()
	key := ferrytest.Bearer(f.OperatorToken(t))
	w := &world{
		f: f, fleet: f.Fleet(t),
		rollouts: fleetv1connect.NewRolloutServiceClient(f.HTTPClient(t), f.APIURL(), key),
		repo:     repositoryv1connect.NewRepositoryServiceClient(f.HTTPClient(t), f.APIURL(), key),
	}
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

// add uploads a bundle of size random bytes and publishes it with info,
// and returns what names it in a desired state.
func (w *world) add(t *testing.T, name, version string, size int, info tuf.BundleInfo) *devicev1.Bundle {
	t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	path := name + "/" + version + "/fw.bin"
	sum := tuftest.SHA256(data)
	stream := w.repo.UploadBlob(t.Context())
	if err := stream.Send(&repositoryv1.UploadBlobRequest{Message: &repositoryv1.UploadBlobRequest_Info{Info: &repositoryv1.BlobInfo{Length: uint64(size), Sha256: sum}}}); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&repositoryv1.UploadBlobRequest{Message: &repositoryv1.UploadBlobRequest_Chunk{Chunk: data}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndReceive(); err != nil {
		t.Fatalf("UploadBlob: %v", err)
	}
	info.Name, info.Version, info.Published = name, version, time.Now().UTC().Truncate(time.Second)
	tf, err := tuf.NewTargetFile(path, int64(size), sum, info)
	if err != nil {
		t.Fatal(err)
	}
	w.publish(t, w.rel.Edit(path, func(m map[string]*metadata.TargetFiles) { m[path] = tf }))
	return &devicev1.Bundle{TargetPath: path, Length: uint64(size), Sha256: sum}
}

// startFleet runs n simulated devices named prefix<number>, labeled
// fleet=label, each step taking stepDelay.
func (w *world) startFleet(t *testing.T, prefix, label string, n int, stepDelay time.Duration) *sim.Fleet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	fl, err := sim.Start(ctx, sim.Config{
		Devices: n, Prefix: prefix, Labels: map[string]string{"fleet": label},
		Link: w.link, Enroller: transport.Enroller{Link: w.link}, Registrar: transport.NewRegistrar(w.link, w.f.OperatorToken(t)),
		TrustedRoot: w.rel.RootJSON(), Hardware: "gw-a", Dir: t.TempDir(), Seed: 1, StepDelay: stepDelay,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, DownloadAttempts: 3, DownloadBackoff: 20 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
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

// update gives every device of the fleet labeled label bundle and waits
// until each has reported SUCCEEDED on it.
func (w *world) update(t *testing.T, label string, ids []string, bundle *devicev1.Bundle) {
	t.Helper()
	if _, err := w.fleet.SetDesiredState(t.Context(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		Selector: "fleet=" + label, Document: &devicev1.DesiredDocument{Bundle: bundle},
	})); err != nil {
		t.Fatalf("SetDesiredState: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, id := range ids {
		for {
			r, err := w.fleet.GetDevice(t.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: id}))
			if err != nil {
				t.Fatalf("GetDevice %s: %v", id, err)
			}
			d := r.Msg.GetDevice()
			if j := d.GetJob(); j.GetDesiredVersion() == d.GetDesired().GetVersion() && j.GetStatus() == devicev1.JobStatus_JOB_STATUS_SUCCEEDED {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("device %s did not succeed: %v", id, d.GetJob())
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
}
