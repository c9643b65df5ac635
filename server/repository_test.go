package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
	"golang.org/x/net/http2"

	"github.com/ferryhq/ferry/internal/ferrytest"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// repoFixture is a running ferryd with an initialized repository and the
// release engineer who holds its offline keys.
type repoFixture struct {
	f      *ferrytest.Ferryd
	client repositoryv1connect.RepositoryServiceClient
	rel    *tuftest.Release
}

// newRepoFixture starts ferryd, reads its online keys, and publishes a
// root and the first targets (with 2^binBits hash bins) over the API.
func newRepoFixture(t testing.TB, f *ferrytest.Ferryd, opts tuftest.Options, clientOpts ...connect.ClientOption) *repoFixture {
	t.Helper()
	if f == nil {
		f = ferrytest.Start(t, ferrytest.Embedded, nil)
	}
	clientOpts = append([]connect.ClientOption{ferrytest.Bearer(f.OperatorToken(t))}, clientOpts...)
	c := repositoryv1connect.NewRepositoryServiceClient(f.HTTPClient(t), f.APIURL(), clientOpts...)
	rel := tuftest.New(t, onlineKeys(t, c), opts)
	fx := &repoFixture{f: f, client: c, rel: rel}
	if _, err := fx.publishRoot(rel.RootJSON()); err != nil {
		t.Fatalf("PublishRoot: %v", err)
	}
	if _, err := fx.publish(rel.Init()...); err != nil {
		t.Fatalf("PublishTargets: %v", err)
	}
	return fx
}

func onlineKeys(t testing.TB, c repositoryv1connect.RepositoryServiceClient) map[string]*metadata.Key {
	t.Helper()
	resp, err := c.GetOnlineKeys(context.Background(), connect.NewRequest(&repositoryv1.GetOnlineKeysRequest{}))
	if err != nil {
		t.Fatalf("GetOnlineKeys: %v", err)
	}
	keys := map[string]*metadata.Key{}
	for _, k := range resp.Msg.GetKeys() {
		key := &metadata.Key{Type: k.GetKeyType(), Scheme: k.GetScheme(), Value: metadata.KeyVal{PublicKey: k.GetPublicKey()}}
		if tuf.KeyID(key) != k.GetKeyId() {
			t.Fatalf("online %s key: id %s does not match the key", k.GetRole(), k.GetKeyId())
		}
		keys[k.GetRole()] = key
	}
	return keys
}

func (fx *repoFixture) publishRoot(raw []byte) (*repositoryv1.PublishRootResponse, error) {
	resp, err := fx.client.PublishRoot(context.Background(), connect.NewRequest(&repositoryv1.PublishRootRequest{Metadata: raw}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func (fx *repoFixture) publish(roles ...tuf.SignedMetadata) (*repositoryv1.PublishTargetsResponse, error) {
	req := &repositoryv1.PublishTargetsRequest{Role: roles[0].Role, Metadata: roles[0].Data}
	for _, r := range roles[1:] {
		req.AdditionalRoles = append(req.AdditionalRoles, &repositoryv1.RoleMetadata{Role: r.Role, Metadata: r.Data})
	}
	resp, err := fx.client.PublishTargets(context.Background(), connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// upload streams data to UploadBlob in small chunks, declaring length and
// digest.
func (fx *repoFixture) upload(length uint64, sha string, data []byte) error {
	stream := fx.client.UploadBlob(context.Background())
	if err := stream.Send(&repositoryv1.UploadBlobRequest{Message: &repositoryv1.UploadBlobRequest_Info{Info: &repositoryv1.BlobInfo{Length: length, Sha256: sha}}}); err != nil {
		return err
	}
	for len(data) > 0 {
		n := min(len(data), 7)
		if err := stream.Send(&repositoryv1.UploadBlobRequest{Message: &repositoryv1.UploadBlobRequest_Chunk{Chunk: data[:n]}}); err != nil {
			break // the server answered early; CloseAndReceive has why
		}
		data = data[n:]
	}
	_, err := stream.CloseAndReceive()
	return err
}

// add uploads data and publishes it at path.
func (fx *repoFixture) add(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := fx.upload(uint64(len(data)), tuftest.SHA256(data), data); err != nil {
		t.Fatalf("UploadBlob: %v", err)
	}
	if _, err := fx.publish(fx.rel.Add(path, data)); err != nil {
		t.Fatalf("PublishTargets %s: %v", path, err)
	}
}

// versions returns the repository's current versions.
func (fx *repoFixture) versions(t testing.TB) *repositoryv1.GetOnlineKeysResponse {
	t.Helper()
	resp, err := fx.client.GetOnlineKeys(context.Background(), connect.NewRequest(&repositoryv1.GetOnlineKeysRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	resp.Msg.Keys = nil
	return resp.Msg
}

// operatorHTTP is an HTTP client that sends the operator's API key.
func (fx *repoFixture) operatorHTTP(t testing.TB) *http.Client {
	return &http.Client{Transport: bearerTransport{key: fx.f.OperatorToken(t), next: fx.f.HTTPClient(t).Transport}}
}

// deviceHTTP is an HTTP client that presents a device's certificate.
func (fx *repoFixture) deviceHTTP(t testing.TB, id string) *http.Client {
	return &http.Client{Transport: &http2.Transport{TLSClientConfig: fx.f.DeviceTLS(t, id)}}
}

type bearerTransport struct {
	key  string
	next http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return b.next.RoundTrip(r)
}

// tufClient is a device-side TUF client: go-tuf's updater, a fresh one for
// each refresh as a device makes after a restart, trusting the root and
// metadata cached in dir.
type tufClient struct {
	t       testing.TB
	fx      *repoFixture
	dir     string
	fetcher fetcher.Fetcher
}

func (fx *repoFixture) tufClient(t testing.TB, hc *http.Client) *tufClient {
	// Not NewFetcherWithHTTPClient: the fetcher it returns retries a 404
	// (how a client learns there is no newer root) for minutes.
	f := fetcher.NewDefaultFetcher()
	f.SetHTTPClient(hc)
	return &tufClient{t: t, fx: fx, dir: t.TempDir(), fetcher: f}
}

// updater returns a new updater; mutate may change its configuration.
func (c *tufClient) updater(mutate func(*config.UpdaterConfig)) *updater.Updater {
	c.t.Helper()
	root, err := os.ReadFile(filepath.Join(c.dir, "root.json"))
	if err != nil {
		root = c.fx.rel.RootJSON() // first start: the root shipped with the device
	}
	cfg, err := config.New(c.fx.f.APIURL()+"/tuf/metadata", root)
	if err != nil {
		c.t.Fatal(err)
	}
	cfg.RemoteTargetsURL = c.fx.f.APIURL() + "/tuf/targets"
	cfg.LocalMetadataDir = c.dir
	cfg.LocalTargetsDir = filepath.Join(c.dir, "targets")
	cfg.Fetcher = c.fetcher
	if mutate != nil {
		mutate(cfg)
	}
	if err := cfg.EnsurePathsExist(); err != nil {
		c.t.Fatal(err)
	}
	u, err := updater.New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return u
}

// refresh runs a new updater's Refresh.
func (c *tufClient) refresh() (*updater.Updater, error) {
	c.t.Helper()
	u := c.updater(nil)
	return u, u.Refresh()
}

// trusted returns the versions of the metadata the client trusts (from
// its cache on disk, which is what the next refresh starts from).
func (c *tufClient) trusted() map[string]int64 {
	c.t.Helper()
	out := map[string]int64{}
	for _, role := range []string{"root", "timestamp", "snapshot", "targets"} {
		raw, err := os.ReadFile(filepath.Join(c.dir, role+".json"))
		if err != nil {
			continue
		}
		var doc struct {
			Signed struct {
				Version int64 `json:"version"`
			} `json:"signed"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			c.t.Fatal(err)
		}
		out[role] = doc.Signed.Version
	}
	return out
}

func TestRepositoryEndToEnd(t *testing.T) {
	tests := []struct {
		name     string
		protocol []connect.ClientOption
		bins     int
	}{
		{"connect, top-level targets", nil, 0},
		{"grpc, hash bins", []connect.ClientOption{connect.WithGRPC()}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx := newRepoFixture(t, nil, tuftest.Options{BinBits: tt.bins}, tt.protocol...)
			data := bytes.Repeat([]byte("firmware "), 1000)
			fx.add(t, "camera/2.1.0/fw.bin", data)
			fx.add(t, "gateway/1.0.0/fw.bin", []byte("gateway firmware"))

			// An operator's client: refresh, find, download, verify.
			op := fx.tufClient(t, fx.operatorHTTP(t))
			u, err := op.refresh()
			if err != nil {
				t.Fatalf("refresh: %v", err)
			}
			tf, err := u.GetTargetInfo("camera/2.1.0/fw.bin")
			if err != nil {
				t.Fatalf("GetTargetInfo: %v", err)
			}
			_, got, err := u.DownloadTarget(tf, "", "")
			if err != nil {
				t.Fatalf("DownloadTarget: %v", err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("downloaded bytes differ from the published bundle")
			}

			// A device refreshes with its client certificate.
			dev := fx.tufClient(t, fx.deviceHTTP(t, "dev-1"))
			u, err = dev.refresh()
			if err != nil {
				t.Fatalf("device refresh: %v", err)
			}
			if tf2, err := u.GetTargetInfo("gateway/1.0.0/fw.bin"); err != nil || tf2.Length != int64(len("gateway firmware")) {
				t.Fatalf("device GetTargetInfo = %+v, %v", tf2, err)
			}

			// The same bundles through the API.
			list, err := fx.client.ListBundles(context.Background(), connect.NewRequest(&repositoryv1.ListBundlesRequest{PageSize: 1}))
			if err != nil {
				t.Fatal(err)
			}
			if len(list.Msg.GetBundles()) != 1 || list.Msg.GetBundles()[0].GetTargetPath() != "camera/2.1.0/fw.bin" || list.Msg.GetNextPageToken() == "" {
				t.Fatalf("ListBundles page 1 = %v", list.Msg)
			}
			list, err = fx.client.ListBundles(context.Background(), connect.NewRequest(&repositoryv1.ListBundlesRequest{PageToken: list.Msg.GetNextPageToken()}))
			if err != nil || len(list.Msg.GetBundles()) != 1 || list.Msg.GetBundles()[0].GetTargetPath() != "gateway/1.0.0/fw.bin" {
				t.Fatalf("ListBundles page 2 = %v, %v", list.Msg, err)
			}
			b, err := fx.client.GetBundle(context.Background(), connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: "camera/2.1.0/fw.bin"}))
			if err != nil {
				t.Fatal(err)
			}
			if got := b.Msg.GetBundle(); got.GetLength() != uint64(len(data)) || got.GetHashes()["sha256"] != tuftest.SHA256(data) || got.GetName() != "test" {
				t.Fatalf("GetBundle = %v", got)
			}
			_, err = fx.client.GetBundle(context.Background(), connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: "no/such/bundle"}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Fatalf("GetBundle of a missing bundle = %v, want NotFound", err)
			}
		})
	}
}

func TestTUFHTTP(t *testing.T) {
	fx := newRepoFixture(t, nil, tuftest.Options{})
	data := []byte("0123456789abcdef")
	fx.add(t, "camera/1.0/fw.bin", data)
	target := fx.f.APIURL() + "/tuf/targets/" + tuf.HashedTargetName("camera/1.0/fw.bin", tuftest.SHA256(data))
	meta := fx.f.APIURL() + "/tuf/metadata/"
	anonymous := fx.f.HTTPClient(t)
	operator := fx.operatorHTTP(t)
	device := fx.deviceHTTP(t, "dev-2")

	tests := []struct {
		name       string
		client     *http.Client
		method     string
		url        string
		header     http.Header
		wantStatus int
		wantBody   string
		wantHeader map[string]string
	}{
		{"anonymous metadata", anonymous, "GET", meta + "timestamp.json", nil, http.StatusUnauthorized, "", nil},
		{"anonymous target", anonymous, "GET", target, nil, http.StatusUnauthorized, "", nil},
		{"operator timestamp", operator, "GET", meta + "timestamp.json", nil, http.StatusOK, "", map[string]string{"Cache-Control": "private, no-cache", "Content-Type": "application/json"}},
		{"device root", device, "GET", meta + "1.root.json", nil, http.StatusOK, "", map[string]string{"Cache-Control": "private, max-age=31536000, immutable", "ETag": `"1.root.json"`}},
		{"versioned metadata revalidated", operator, "GET", meta + "1.root.json", http.Header{"If-None-Match": {`"1.root.json"`}}, http.StatusNotModified, "", nil},
		{"unversioned snapshot is not served", operator, "GET", meta + "snapshot.json", nil, http.StatusNotFound, "", nil},
		{"missing version", operator, "GET", meta + "99.targets.json", nil, http.StatusNotFound, "", nil},
		{"odd metadata name", operator, "GET", meta + "..%2Fblobs.json", nil, http.StatusNotFound, "", nil},
		{"operator target", operator, "GET", target, nil, http.StatusOK, string(data), map[string]string{"Accept-Ranges": "bytes", "ETag": `"sha256:` + tuftest.SHA256(data) + `"`}},
		{"range of a target", operator, "GET", target, http.Header{"Range": {"bytes=4-9"}}, http.StatusPartialContent, "456789", map[string]string{"Content-Range": "bytes 4-9/16"}},
		{"target under the wrong digest", operator, "GET", fx.f.APIURL() + "/tuf/targets/" + tuf.HashedTargetName("camera/1.0/fw.bin", tuftest.SHA256([]byte("x"))), nil, http.StatusNotFound, "", nil},
		{"target without a digest", operator, "GET", fx.f.APIURL() + "/tuf/targets/camera/1.0/fw.bin", nil, http.StatusNotFound, "", nil},
		{"path traversal", operator, "GET", fx.f.APIURL() + "/tuf/targets/..%2F..%2F" + tuftest.SHA256(data) + ".fw.bin", nil, http.StatusNotFound, "", nil},
		{"not a GET", operator, "POST", meta + "timestamp.json", nil, http.StatusMethodNotAllowed, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.header {
				req.Header[k] = v
			}
			resp, err := tt.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body := new(bytes.Buffer)
			body.ReadFrom(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.wantStatus)
			}
			if tt.wantBody != "" && body.String() != tt.wantBody {
				t.Errorf("body %q, want %q", body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
		})
	}
}
