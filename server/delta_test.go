package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"

	"github.com/ferryhq/ferry/delta"
	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// firmware returns n bytes of test image for a release: the same seed
// gives mostly the same bytes, with edits per release.
func firmware(release, n int) []byte {
	r := rand.New(rand.NewPCG(1, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	e := rand.New(rand.NewPCG(uint64(release), 2))
	for range 10 * release {
		b[e.IntN(n)] = byte(e.Uint32())
	}
	return b
}

// makePatch makes the real patch from base to result.
func makePatch(t testing.TB, base, result []byte) []byte {
	t.Helper()
	dir := t.TempDir()
	open := func(name string, data []byte) *os.File {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	var buf bytes.Buffer
	if err := delta.Make(context.Background(), &buf, open("base", base), open("result", result), delta.Options{Window: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// addPatch uploads and publishes, with result (already published), the
// patch from base to result, and returns its path.
func (fx *repoFixture) addPatch(t testing.TB, basePath string, base []byte, resultPath string, result []byte) (string, []byte) {
	t.Helper()
	patch := makePatch(t, base, result)
	if err := fx.upload(uint64(len(patch)), tuftest.SHA256(patch), patch); err != nil {
		t.Fatalf("UploadBlob: %v", err)
	}
	d := tuf.DeltaInfo{
		Base:   tuf.DeltaRef{Path: basePath, SHA256: tuftest.SHA256(base), Length: int64(len(base))},
		Result: tuf.DeltaRef{Path: resultPath, SHA256: tuftest.SHA256(result), Length: int64(len(result))},
		Format: delta.Format, Window: 1 << 20,
	}
	tf, err := tuf.NewDeltaTargetFile(int64(len(patch)), tuftest.SHA256(patch), tuf.BundleInfo{Name: "test", Version: "1.0.0", Published: time.Now().UTC().Truncate(time.Second)}, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fx.publish(fx.rel.Put(tf)...); err != nil {
		t.Fatalf("PublishTargets %s: %v", tf.Path, err)
	}
	return tf.Path, patch
}

// TestDeltaDownloadAuthorization: a device's download token for its
// desired bundle fetches the signed patch to that bundle, bound to its
// certificate or as a pre-signed URL, and no patch to another bundle.
func TestDeltaDownloadAuthorization(t *testing.T) {
	ctx := context.Background()
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	fx := newRepoFixture(t, f, tuftest.Options{BinBits: 2})
	const n = 200 << 10
	v1, v2, v3 := firmware(1, n), firmware(2, n), firmware(3, n)
	const p1, p2, p3 = "gw/1.0.0/fw.bin", "gw/2.0.0/fw.bin", "gw/3.0.0/fw.bin"
	fx.add(t, p1, v1)
	fx.add(t, p2, v2)
	fx.add(t, p3, v3)
	to2, patch12 := fx.addPatch(t, p1, v1, p2, v2)
	to3, patch13 := fx.addPatch(t, p1, v1, p3, v3)
	from2, patch23 := fx.addPatch(t, p2, v2, p3, v3)
	if len(patch12) > n/10 {
		t.Fatalf("patch of %d bytes for %d changed bytes in %d", len(patch12), 20, n)
	}

	gw := enroll(t, f, "gw-delta")
	if _, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "gw-delta",
		Document: &devicev1.DesiredDocument{Bundle: &devicev1.Bundle{TargetPath: p2, Length: uint64(len(v2)), Sha256: tuftest.SHA256(v2)}},
	})); err != nil {
		t.Fatalf("SetDesiredState: %v", err)
	}
	tok := mustToken(t, f, gw, &credentialsv1.IssueDownloadTokenRequest{TargetPath: p2})
	pre := mustToken(t, f, gw, &credentialsv1.IssueDownloadTokenRequest{TargetPath: p2, Presigned: true})
	urlOf := func(path string, data []byte) string {
		return f.APIURL() + "/tuf/targets/" + tuf.HashedTargetName(path, tuftest.SHA256(data))
	}
	noCert := &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost", MinVersion: tls.VersionTLS13}

	tests := []struct {
		name        string
		url, token  string
		tls         bool // over the device's own connection
		rangeHeader string
		want        []byte
		code        codes.Code
	}{
		{"the bundle itself", urlOf(p2, v2), tok.GetToken(), true, "", v2, codes.OK},
		{"the patch to its desired bundle", urlOf(to2, patch12), tok.GetToken(), true, "", patch12, codes.OK},
		{"the patch, resumed with Range", urlOf(to2, patch12), tok.GetToken(), true, "bytes=100-", patch12, codes.OK},
		{"the patch through the pre-signed URL's token", urlOf(to2, patch12) + "?token=" + pre.GetToken(), "", false, "", patch12, codes.OK},
		{"a patch to another bundle", urlOf(to3, patch13), tok.GetToken(), true, "", patch13, codes.PermissionDenied},
		{"a patch to another bundle, pre-signed", urlOf(to3, patch13) + "?token=" + pre.GetToken(), "", false, "", patch13, codes.PermissionDenied},
		{"a patch from its desired bundle", urlOf(from2, patch23), tok.GetToken(), true, "", patch23, codes.PermissionDenied},
		{"the base bundle", urlOf(p1, v1), tok.GetToken(), true, "", v1, codes.PermissionDenied},
		{"the patch under a wrong digest", urlOf(to2, patch13), tok.GetToken(), true, "", patch12, codes.PermissionDenied},
		{"a path that looks like a patch", urlOf(p2+".delta-0123456789abcdef", v2), tok.GetToken(), true, "", v2, codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := noCert
			if tc.tls {
				cfg = gw.tls
			}
			if got := download(t, cfg, tc.url, tc.token, tc.rangeHeader, tc.want); got != tc.code {
				t.Fatalf("GET %s: %v, want %v", strings.TrimPrefix(tc.url, f.APIURL()), got, tc.code)
			}
		})
	}

	// go-tuf's updater finds the patch by the path the device computes and
	// downloads it with the bundle's token.
	c := fx.tufClient(t, &http.Client{Transport: targetToken{token: tok.GetToken(), next: &http2.Transport{TLSClientConfig: gw.tls}}})
	u, err := c.refresh()
	if err != nil {
		t.Fatal(err)
	}
	info, err := u.GetTargetInfo(tuf.DeltaPath(p2, tuftest.SHA256(v1)))
	if err != nil {
		t.Fatalf("GetTargetInfo of the patch: %v", err)
	}
	d, ok, err := tuf.ParseDelta(info.Custom)
	if err != nil || !ok || d.Base.Path != p1 || d.Result.SHA256 != tuftest.SHA256(v2) {
		t.Fatalf("the patch's signed delta metadata: %+v, %v, %v", d, ok, err)
	}
	if _, data, err := u.DownloadTarget(info, "", ""); err != nil || !bytes.Equal(data, patch12) {
		t.Fatalf("DownloadTarget of the patch: %v", err)
	}
}
