package server_test

import (
	"bytes"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"golang.org/x/net/http2"

	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// sharedPair starts two ferryd instances on one Redis that share one data
// directory (repository and online keys), as instances behind one load
// balancer do, and initializes the repository through B.
func sharedPair(t *testing.T, opts tuftest.Options) (a, b *ferrytest.Ferryd, onA, onB *repoFixture) {
	t.Helper()
	a = ferrytest.Start(t, ferrytest.Redis, nil)
	b = a.StartPeer(t, func(cfg *server.Config) { cfg.DataDir = a.Config().DataDir })
	onB = newRepoFixture(t, b, opts)
	onA = &repoFixture{f: a, rel: onB.rel,
		client: repositoryv1connect.NewRepositoryServiceClient(a.HTTPClient(t), a.APIURL(), ferrytest.Bearer(a.OperatorToken(t)))}
	return a, b, onA, onB
}

// eventually calls try until it returns nil, failing the test with its
// last error once the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, try func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := try()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSharedRepositoryPublishOnPeer: a bundle published through ferryd B
// is served by ferryd A within seconds: a device's go-tuf updater on A
// finds and downloads it, the bundle list and GetBundle on A show it, and
// a rollout of it is created through A. Every timestamp A serves names a
// snapshot and targets A serves.
func TestSharedRepositoryPublishOnPeer(t *testing.T) {
	a, b, onA, onB := sharedPair(t, tuftest.Options{BinBits: 2})
	ctx := t.Context()
	gw := enroll(t, a, "gw-shared")
	// A has served the repository once before the publish: its view is
	// the one from before.
	if _, err := onA.tufClient(t, &http.Client{Transport: &http2.Transport{TLSClientConfig: gw.tls}}).refresh(); err != nil {
		t.Fatalf("updater on A before the publish: %v", err)
	}

	const target = "shared/1.0.0/fw.bin"
	fw := bytes.Repeat([]byte("published through the peer "), 300)
	onB.add(t, target, fw)
	published := time.Now()

	// Download through A: the device's own path, a fresh updater each try
	// (as an agent after a failed attempt), the token issued by A. The
	// desired state is set through B, so nothing on A asks for the bundle
	// before the device does.
	setDesired(t, b.Fleet(t), "gw-shared", target, fw)
	tok := mustToken(t, a, gw, &credentialsv1.IssueDownloadTokenRequest{TargetPath: target})
	withToken := &http.Client{Transport: alwaysAuthorization{value: "Bearer " + tok.GetToken(), next: &http2.Transport{TLSClientConfig: gw.tls}}}
	tc := onA.tufClient(t, withToken)
	eventually(t, 10*time.Second, "download through A of a bundle published on B", func() error {
		u, err := tc.refresh()
		if err != nil {
			return fmt.Errorf("refresh: %w", err)
		}
		info, err := u.GetTargetInfo(target)
		if err != nil {
			return fmt.Errorf("target info: %w", err)
		}
		_, data, err := u.DownloadTarget(info, "", "")
		if err != nil {
			return fmt.Errorf("download: %w", err)
		}
		if !bytes.Equal(data, fw) {
			return fmt.Errorf("downloaded %d bytes that are not the bundle", len(data))
		}
		return nil
	})
	t.Logf("publish on B → served by A after %d ms", time.Since(published).Milliseconds())

	// The back-office API on A: list, get, roll out.
	eventually(t, 10*time.Second, "bundle list and GetBundle on A", func() error {
		got, err := onA.client.GetBundle(ctx, connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: target}))
		if err != nil {
			return fmt.Errorf("GetBundle: %w", err)
		}
		if got.Msg.GetBundle().GetHashes()["sha256"] != tuftest.SHA256(fw) {
			return fmt.Errorf("GetBundle: %v", got.Msg.GetBundle())
		}
		list, err := onA.client.ListBundles(ctx, connect.NewRequest(&repositoryv1.ListBundlesRequest{}))
		if err != nil {
			return fmt.Errorf("ListBundles: %w", err)
		}
		for _, b := range list.Msg.GetBundles() {
			if b.GetTargetPath() == target {
				return nil
			}
		}
		return fmt.Errorf("ListBundles: %d bundles, not %s", len(list.Msg.GetBundles()), target)
	})
	rollouts := fleetv1connect.NewRolloutServiceClient(a.HTTPClient(t), a.APIURL(), ferrytest.Bearer(a.OperatorToken(t)))
	bundle := &devicev1.Bundle{TargetPath: target, Length: uint64(len(fw)), Sha256: tuftest.SHA256(fw)}
	if _, err := rollouts.CreateRollout(ctx, connect.NewRequest(&fleetv1.CreateRolloutRequest{Bundle: bundle, DeviceIds: []string{"gw-shared"}})); err != nil {
		t.Fatalf("CreateRollout through A: %v", err)
	}

	// The same holds for the next version, published while A serves.
	fw2 := bytes.Repeat([]byte("the next version, also through the peer "), 300)
	const target2 = "shared/1.1.0/fw.bin"
	onB.add(t, target2, fw2)
	eventually(t, 10*time.Second, "GetBundle on A of the next version", func() error {
		_, err := onA.client.GetBundle(ctx, connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: target2}))
		return err
	})
	consistentView(t, onA, onA.operatorHTTP(t))
}

// consistentView checks that the timestamp fx's ferryd serves names a
// snapshot it serves, that snapshot's targets roles are all served, and
// every target they list downloads.
func consistentView(t *testing.T, fx *repoFixture, hc *http.Client) {
	t.Helper()
	get := func(name string) []byte {
		t.Helper()
		return fetch(t, hc, fx.f.APIURL()+"/tuf/metadata/"+name)
	}
	ts, err := metadata.Timestamp().FromBytes(get("timestamp.json"))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := metadata.Snapshot().FromBytes(get(fmt.Sprintf("%d.snapshot.json", ts.Signed.Meta["snapshot.json"].Version)))
	if err != nil {
		t.Fatal(err)
	}
	for name, mf := range snap.Signed.Meta {
		md, err := metadata.Targets().FromBytes(get(fmt.Sprintf("%d.%s", mf.Version, name)))
		if err != nil {
			t.Fatal(err)
		}
		for path, tf := range md.Signed.Targets {
			url := fx.f.APIURL() + "/tuf/targets/" + hashedName(path, tf)
			if data := fetch(t, hc, url); int64(len(data)) != tf.Length {
				t.Fatalf("%s: %d bytes, want %d", url, len(data), tf.Length)
			}
		}
	}
}

func hashedName(path string, tf *metadata.TargetFiles) string {
	dir, base := "", path
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '/' {
			dir, base = path[:i+1], path[i+1:]
			break
		}
	}
	return fmt.Sprintf("%s%x.%s", dir, []byte(tf.Hashes["sha256"]), base)
}

// fetch GETs url and returns the body of a 200, failing the test otherwise.
func fetch(t *testing.T, hc *http.Client, url string) []byte {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return buf.Bytes()
}

// TestSharedRepositoryConcurrentPublish: release engineers publish
// through both instances at the same moment, each a bundle in its own
// hash bin; no publish is lost: afterwards every bundle is in the
// repository that both instances serve.
func TestSharedRepositoryConcurrentPublish(t *testing.T) {
	_, _, onA, onB := sharedPair(t, tuftest.Options{BinBits: 4})
	ctx := t.Context()
	const rounds = 6
	var want []string
	for round := range rounds {
		// Two paths in different bins, their blobs uploaded first.
		var paths [2]string
		var mds [2]tuf.SignedMetadata
		for i := range paths {
			for n := 0; ; n++ {
				p := fmt.Sprintf("race/%d-%d-%d/fw.bin", round, i, n)
				if i == 0 || tuf.RoleFor(onB.rel.Top, p) != tuf.RoleFor(onB.rel.Top, paths[0]) {
					paths[i] = p
					break
				}
			}
			data := []byte("bundle " + paths[i])
			if err := onB.upload(uint64(len(data)), tuftest.SHA256(data), data); err != nil {
				t.Fatal(err)
			}
			mds[i] = onB.rel.Add(paths[i], data)
		}
		var wg sync.WaitGroup
		var errs [2]error
		for i, fx := range []*repoFixture{onA, onB} {
			wg.Go(func() { _, errs[i] = fx.publish(mds[i]) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: publish %s: %v", round, paths[i], err)
			}
		}
		want = append(want, paths[:]...)
	}
	for _, fx := range []*repoFixture{onA, onB} {
		for _, p := range want {
			eventually(t, 10*time.Second, "GetBundle "+p, func() error {
				_, err := fx.client.GetBundle(ctx, connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: p}))
				return err
			})
		}
	}
}

// TestSharedRepositoryNotice: with no request that would make A look (its
// periodic check an hour apart), the notice B sends on publishing makes A
// load the new version within seconds.
func TestSharedRepositoryNotice(t *testing.T) {
	a := ferrytest.Start(t, ferrytest.Redis, func(cfg *server.Config) { cfg.Repository.CheckInterval = time.Hour })
	b := a.StartPeer(t, func(cfg *server.Config) { cfg.DataDir = a.Config().DataDir })
	onB := newRepoFixture(t, b, tuftest.Options{})
	onB.add(t, "notice/fw.bin", []byte("announced"))
	want := onB.versions(t)
	onA := &repoFixture{f: a, client: repositoryv1connect.NewRepositoryServiceClient(a.HTTPClient(t), a.APIURL(), ferrytest.Bearer(a.OperatorToken(t)))}
	eventually(t, 10*time.Second, "A's versions after the notice", func() error {
		// GetOnlineKeys reports the view A serves, and reads nothing.
		if got := onA.versions(t); got.GetTimestampVersion() != want.GetTimestampVersion() || got.GetTargetsVersion() != want.GetTargetsVersion() {
			return fmt.Errorf("A serves timestamp %d and targets %d, B published %d and %d",
				got.GetTimestampVersion(), got.GetTargetsVersion(), want.GetTimestampVersion(), want.GetTargetsVersion())
		}
		return nil
	})
}
