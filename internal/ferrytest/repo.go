package ferrytest

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// BundleData is the content of every bundle Publish publishes, and
// BundleSHA256 its SHA-256 (hex).
var (
	BundleData   = bytes.Repeat([]byte("ferry bundle\n"), 315)
	BundleSHA256 = tuftest.SHA256(BundleData)
)

// Bundle names the bundle Publish publishes at path.
func Bundle(path string) *devicev1.Bundle {
	return &devicev1.Bundle{TargetPath: path, Length: uint64(len(BundleData)), Sha256: BundleSHA256}
}

// releaser is the release engineer of one ferryd's repository.
type releaser struct {
	mu  sync.Mutex
	rel *tuftest.Release
}

// Repository returns a RepositoryService client with the development
// operator's credential.
func (f *Ferryd) Repository(t testing.TB) repositoryv1connect.RepositoryServiceClient {
	return repositoryv1connect.NewRepositoryServiceClient(f.HTTPClient(t), f.APIURL(), Bearer(f.OperatorToken(t)))
}

// Publish publishes BundleData at each path in f's TUF repository, the
// way a release engineer does: upload the bytes, sign targets offline, and
// publish them. The first call creates the repository (a root and targets
// signed by new offline keys, tuftest); a path already published with that
// content is left as it is. Bundle(path) names what it published.
func (f *Ferryd) Publish(t testing.TB, paths ...string) {
	t.Helper()
	ctx := context.Background()
	c := f.Repository(t)
	f.release.mu.Lock()
	defer f.release.mu.Unlock()
	for _, path := range paths {
		got, err := c.GetBundle(ctx, connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: path}))
		if err == nil && got.Msg.GetBundle().GetHashes()["sha256"] == BundleSHA256 {
			continue
		}
		if f.release.rel == nil {
			f.release.rel = initRepository(t, c)
		}
		upload := c.UploadBlob(ctx)
		upload.RequestHeader().Set("Authorization", "Bearer "+f.OperatorToken(t))
		msgs := []*repositoryv1.UploadBlobRequest{
			{Message: &repositoryv1.UploadBlobRequest_Info{Info: &repositoryv1.BlobInfo{Length: uint64(len(BundleData)), Sha256: BundleSHA256}}},
			{Message: &repositoryv1.UploadBlobRequest_Chunk{Chunk: BundleData}},
		}
		for _, m := range msgs {
			if err := upload.Send(m); err != nil {
				break // the answer says why
			}
		}
		if _, err := upload.CloseAndReceive(); err != nil {
			t.Fatalf("upload %s: %v", path, err)
		}
		md := f.release.rel.Add(path, BundleData)
		if _, err := c.PublishTargets(ctx, connect.NewRequest(&repositoryv1.PublishTargetsRequest{Role: md.Role, Metadata: md.Data})); err != nil {
			t.Fatalf("publish %s: %v", path, err)
		}
	}
}

// initRepository publishes a first root naming the server's online keys,
// and empty targets.
func initRepository(t testing.TB, c repositoryv1connect.RepositoryServiceClient) *tuftest.Release {
	t.Helper()
	ctx := context.Background()
	resp, err := c.GetOnlineKeys(ctx, connect.NewRequest(&repositoryv1.GetOnlineKeysRequest{}))
	if err != nil {
		t.Fatalf("GetOnlineKeys: %v", err)
	}
	keys := map[string]*metadata.Key{}
	for _, k := range resp.Msg.GetKeys() {
		keys[k.GetRole()] = &metadata.Key{Type: k.GetKeyType(), Scheme: k.GetScheme(), Value: metadata.KeyVal{PublicKey: k.GetPublicKey()}}
	}
	rel := tuftest.New(t, keys, tuftest.Options{})
	if _, err := c.PublishRoot(ctx, connect.NewRequest(&repositoryv1.PublishRootRequest{Metadata: rel.RootJSON()})); err != nil {
		t.Fatalf("PublishRoot: %v", err)
	}
	for _, md := range rel.Init() {
		if _, err := c.PublishTargets(ctx, connect.NewRequest(&repositoryv1.PublishTargetsRequest{Role: md.Role, Metadata: md.Data})); err != nil {
			t.Fatalf("PublishTargets %s: %v", md.Role, err)
		}
	}
	return rel
}

// TrustedRoot is the root Publish created, the one devices ship with
// (JSON). Call it after Publish.
func (f *Ferryd) TrustedRoot(t testing.TB) []byte {
	t.Helper()
	f.release.mu.Lock()
	defer f.release.mu.Unlock()
	if f.release.rel == nil {
		t.Fatal("TrustedRoot before Publish: the repository has no root yet")
	}
	return f.release.rel.RootJSON()
}
