package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/store/redis"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// device is a device that enrolled with a real ferryd.
type device struct {
	id  string
	key crypto.Signer
	tls *tls.Config
}

func newCSR(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// credentialClient is CredentialService on the API port, over
// server-authenticated TLS (and a client certificate when cert is set).
func credentialClient(t *testing.T, f *ferrytest.Ferryd, cert *tls.Certificate) credentialsv1connect.CredentialServiceClient {
	cfg := &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return credentialsv1connect.NewCredentialServiceClient(&http.Client{Transport: &http2.Transport{TLSClientConfig: cfg}}, f.APIURL())
}

// enroll adds device id through the fleet API and enrolls it with the
// one-time token, the way a device in the field does.
func enroll(t *testing.T, f *ferrytest.Ferryd, id string) *device {
	t.Helper()
	ctx := context.Background()
	added, err := f.Fleet(t).AddDevice(ctx, connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: id, Labels: map[string]string{"model": "gw2"}}))
	if err != nil {
		t.Fatalf("AddDevice(%s): %v", id, err)
	}
	return enrollWithToken(t, f, id, added.Msg.GetEnrollmentToken())
}

// enrollWithToken enrolls device id with a new key and the one-time token.
func enrollWithToken(t *testing.T, f *ferrytest.Ferryd, id, token string) *device {
	t.Helper()
	key, err := credentials.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := credentialClient(t, f, nil).Enroll(context.Background(), connect.NewRequest(&credentialsv1.EnrollRequest{
		Csr: newCSR(t, key), EnrollmentToken: token,
	}))
	if err != nil {
		t.Fatalf("Enroll(%s): %v", id, err)
	}
	return &device{id: id, key: key, tls: deviceTLS(t, f, key, resp.Msg.GetCertificateChain())}
}

func deviceTLS(t *testing.T, f *ferrytest.Ferryd, key crypto.Signer, chain [][]byte) *tls.Config {
	t.Helper()
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		RootCAs: f.CAPool(t), ServerName: "localhost", MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: chain, PrivateKey: key, Leaf: leaf}},
	}
}

// syncCode opens a Sync stream with tlsConfig and returns the code of its
// first receive (OK when a message arrives).
func syncCode(t *testing.T, f *ferrytest.Ferryd, tlsConfig *tls.Config) codes.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := devicev1.NewDeviceServiceClient(f.DeviceConn(t, tlsConfig)).Sync(ctx)
	if err != nil {
		return status.Code(err)
	}
	if err := stream.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{AgentVersion: "test"}}}); err != nil && !errors.Is(err, io.EOF) {
		return status.Code(err)
	}
	_, err = stream.Recv()
	return status.Code(err)
}

// download fetches url with the token over tlsConfig and returns the status
// as a code: a refusal is Unauthenticated (401) or PermissionDenied (403),
// a missing target NotFound (404); OK means the published bytes (want, or
// the range of it that Content-Range names) arrived.
func download(t *testing.T, tlsConfig *tls.Config, url, token, rangeHeader string, want []byte) codes.Code {
	t.Helper()
	client := &http.Client{Transport: &http2.Transport{TLSClientConfig: tlsConfig}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rangeHeader != "" {
		req.Header.Set("Range", rangeHeader)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusOK:
		if !bytes.Equal(body, want) {
			t.Fatalf("GET %s: %d bytes that are not the published target", url, len(body))
		}
		return codes.OK
	case http.StatusPartialContent:
		var first, last, size int
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &first, &last, &size); err != nil ||
			size != len(want) || first > last || last >= size || !bytes.Equal(body, want[first:last+1]) {
			t.Fatalf("GET %s: Content-Range %q with %d bytes that are not that range of the published target",
				url, resp.Header.Get("Content-Range"), len(body))
		}
		return codes.OK
	}
	t.Fatalf("GET %s: unexpected status %s", url, resp.Status)
	return codes.Unknown
}

// setDesired gives device id a desired state naming the bundle data
// published at target.
func setDesired(t *testing.T, fleet fleetv1connect.FleetServiceClient, id, target string, data []byte) {
	t.Helper()
	_, err := fleet.SetDesiredState(context.Background(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: id, Document: &devicev1.DesiredDocument{Bundle: &devicev1.Bundle{TargetPath: target, Length: uint64(len(data)), Sha256: tuftest.SHA256(data)}},
	}))
	if err != nil {
		t.Fatalf("SetDesiredState(%s): %v", id, err)
	}
}

func issueToken(t *testing.T, f *ferrytest.Ferryd, d *device, req *credentialsv1.IssueDownloadTokenRequest) (*credentialsv1.IssueDownloadTokenResponse, error) {
	t.Helper()
	return credentialsv1.NewCredentialServiceClient(f.DeviceConn(t, d.tls)).IssueDownloadToken(context.Background(), req)
}

func mustToken(t *testing.T, f *ferrytest.Ferryd, d *device, req *credentialsv1.IssueDownloadTokenRequest) *credentialsv1.IssueDownloadTokenResponse {
	t.Helper()
	resp, err := issueToken(t, f, d, req)
	if err != nil {
		t.Fatalf("IssueDownloadToken(%s, %s): %v", d.id, req.GetTargetPath(), err)
	}
	return resp
}

// sharedTokenKeys reads the download token keyset from the store, as any
// other ferryd on the same Redis would.
func sharedTokenKeys(t *testing.T, cfg server.Config) *credentials.Keyring {
	t.Helper()
	st, err := redis.Open(context.Background(), cfg.RedisURL, cfg.RedisPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ring, err := credentials.NewKeyring(context.Background(), credentials.KeyringConfig{Secrets: st})
	if err != nil {
		t.Fatal(err)
	}
	return ring
}

func code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if ce := new(connect.Error); errors.As(err, &ce) {
		return codes.Code(ce.Code())
	}
	return status.Code(err)
}

// TestAuthorizationMatrix is the credential broker's authorization table:
// every way in, against a real ferryd on real Redis over real TLS, each
// refused with its code, and the legitimate ways allowed.
func TestAuthorizationMatrix(t *testing.T) {
	var viewerKey string
	f := ferrytest.Start(t, ferrytest.Redis, func(cfg *server.Config) {
		viewerKey = ferrytest.AddOperator(t, cfg, "ana", credentials.RoleViewer)
	})
	ctx := context.Background()
	admin := f.Fleet(t)
	viewer := fleetv1connect.NewFleetServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(viewerKey))
	gw1, gw2, gwRevoked := enroll(t, f, "gw-1"), enroll(t, f, "gw-2"), enroll(t, f, "gw-revoked")
	// Real published bundles: every download allowed below must get the
	// bytes, and every refusal is of a target that exists.
	fw1, fw2 := bytes.Repeat([]byte("fw-1 "), 1000), bytes.Repeat([]byte("fw-2 "), 1000)
	fx := newRepoFixture(t, f, tuftest.Options{})
	fx.add(t, "a/fw-1.bin", fw1)
	fx.add(t, "b/fw-2.bin", fw2)
	setDesired(t, admin, "gw-1", "a/fw-1.bin", fw1)
	setDesired(t, admin, "gw-2", "b/fw-2.bin", fw2)

	// A connection gw-revoked opened before its revocation.
	revokedConn := credentialsv1.NewCredentialServiceClient(f.DeviceConn(t, gwRevoked.tls))
	if _, err := revokedConn.RenewCertificate(ctx, &credentialsv1.RenewCertificateRequest{Csr: newCSR(t, gwRevoked.key)}); err != nil {
		t.Fatalf("renewal before revocation: %v", err)
	}
	if _, err := admin.RevokeDevice(ctx, connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: "gw-revoked", Reason: "stolen"})); err != nil {
		t.Fatal(err)
	}

	// Certificates ferryd never issued, or issued long ago.
	devCA, err := credentials.LoadCA(f.Dev.CACert, f.Dev.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := credentials.NewKey()
	old, err := devCA.IssueDevice("ferry.test", "gw-1", key.Public(), time.Hour, time.Now().Add(-48*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	expiredTLS := deviceTLS(t, f, key, [][]byte{old.Raw})
	otherCA, _ := credentials.NewCA("not ferry", time.Hour, time.Now())
	foreign, _ := otherCA.IssueDevice("ferry.test", "gw-1", key.Public(), time.Hour, time.Now())
	foreignTLS := deviceTLS(t, f, key, [][]byte{foreign.Raw})
	noCertTLS := &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost", MinVersion: tls.VersionTLS13}

	// Tokens: gw-1's own, and forged or stale ones.
	tok1 := mustToken(t, f, gw1, &credentialsv1.IssueDownloadTokenRequest{TargetPath: "a/fw-1.bin"})
	tok2 := mustToken(t, f, gw2, &credentialsv1.IssueDownloadTokenRequest{TargetPath: "b/fw-2.bin"})
	once := mustToken(t, f, gw1, &credentialsv1.IssueDownloadTokenRequest{TargetPath: "a/fw-1.bin", SingleUse: true})
	presigned := mustToken(t, f, gw1, &credentialsv1.IssueDownloadTokenRequest{TargetPath: "a/fw-1.bin", Presigned: true})
	if !strings.Contains(tok1.GetUrl(), "/tuf/targets/a/") || !strings.Contains(presigned.GetUrl(), "token=") {
		t.Fatalf("download URLs %q and %q", tok1.GetUrl(), presigned.GetUrl())
	}
	minter, err := credentials.NewTokens(sharedTokenKeys(t, f.Config()), nil)
	if err != nil {
		t.Fatal(err)
	}
	gw1Leaf := gw1.tls.Certificates[0].Leaf
	expiredTok, _, err := minter.Issue(ctx, credentials.DownloadGrant{
		DeviceID: "gw-1", Target: "a/fw-1.bin", SHA256: tuftest.SHA256(fw1), CertThumbprint: credentials.Thumbprint(gw1Leaf),
		IssuedAt: time.Now().Add(-time.Hour), ExpiresAt: time.Now().Add(-time.Minute),
	})
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(tok1.GetToken(), ".")
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(claims), `"gw-1"`, `"gw-2"`, 1))) + "." + parts[2]
	url2 := tok2.GetUrl() // b/fw-2.bin

	// Operator certificates.
	opCert, err := tls.LoadX509KeyPair(f.Dev.OperatorCert, f.Dev.OperatorKey)
	if err != nil {
		t.Fatal(err)
	}
	opClient := func(cert tls.Certificate) fleetv1connect.FleetServiceClient {
		return fleetv1connect.NewFleetServiceClient(&http.Client{Transport: &http2.Transport{TLSClientConfig: &tls.Config{
			RootCAs: f.CAPool(t), ServerName: "localhost", Certificates: []tls.Certificate{cert},
		}}}, f.APIURL())
	}
	deviceAsOperator := opClient(gw1.tls.Certificates[0])
	operatorByCert := opClient(opCert)
	reuse := enrollToken(t, f, "gw-reuse")

	tests := []struct {
		name string
		do   func() codes.Code
		want codes.Code
	}{
		// Device port.
		{"no client certificate", func() codes.Code { return syncCode(t, f, noCertTLS) }, codes.Unavailable},
		{"certificate from another CA", func() codes.Code { return syncCode(t, f, foreignTLS) }, codes.Unavailable},
		{"expired certificate", func() codes.Code { return syncCode(t, f, expiredTLS) }, codes.Unavailable},
		{"revoked device: new handshake", func() codes.Code { return syncCode(t, f, gwRevoked.tls) }, codes.Unavailable},
		{"revoked device: renewal on an open connection", func() codes.Code {
			_, err := revokedConn.RenewCertificate(ctx, &credentialsv1.RenewCertificateRequest{Csr: newCSR(t, gwRevoked.key)})
			return code(err)
		}, codes.PermissionDenied},
		{"revoked device: download token on an open connection", func() codes.Code {
			_, err := revokedConn.IssueDownloadToken(ctx, &credentialsv1.IssueDownloadTokenRequest{TargetPath: "a/fw-1.bin"})
			return code(err)
		}, codes.PermissionDenied},
		{"token for another device's target", func() codes.Code {
			_, err := issueToken(t, f, gw1, &credentialsv1.IssueDownloadTokenRequest{TargetPath: "b/fw-2.bin"})
			return code(err)
		}, codes.PermissionDenied},
		{"token request without a target", func() codes.Code {
			_, err := issueToken(t, f, gw1, &credentialsv1.IssueDownloadTokenRequest{})
			return code(err)
		}, codes.InvalidArgument},
		{"renewal with a malformed CSR", func() codes.Code {
			_, err := credentialsv1.NewCredentialServiceClient(f.DeviceConn(t, gw1.tls)).RenewCertificate(ctx, &credentialsv1.RenewCertificateRequest{Csr: []byte("junk")})
			return code(err)
		}, codes.InvalidArgument},
		// Downloads.
		{"token for another target", func() codes.Code { return download(t, gw1.tls, url2, tok1.GetToken(), "", fw2) }, codes.PermissionDenied},
		{"expired token", func() codes.Code { return download(t, gw1.tls, tok1.GetUrl(), expiredTok, "", fw1) }, codes.Unauthenticated},
		{"tampered token", func() codes.Code { return download(t, gw1.tls, tok1.GetUrl(), tampered, "", fw1) }, codes.Unauthenticated},
		{"valid token over another device's connection", func() codes.Code { return download(t, gw2.tls, tok1.GetUrl(), tok1.GetToken(), "", fw1) }, codes.PermissionDenied},
		{"bound token without a client certificate", func() codes.Code { return download(t, noCertTLS, tok1.GetUrl(), tok1.GetToken(), "", fw1) }, codes.PermissionDenied},
		{"device certificate without a token", func() codes.Code { return download(t, gw1.tls, tok1.GetUrl(), "", "", fw1) }, codes.Unauthenticated},
		{"single-use token, first use", func() codes.Code { return download(t, gw1.tls, once.GetUrl(), once.GetToken(), "", fw1) }, codes.OK},
		{"single-use token, replayed", func() codes.Code { return download(t, gw1.tls, once.GetUrl(), once.GetToken(), "", fw1) }, codes.PermissionDenied},
		{"presigned URL on another target", func() codes.Code {
			return download(t, noCertTLS, url2+"?token="+presigned.GetToken(), "", "", fw2)
		}, codes.PermissionDenied},
		// Enrollment and operators.
		{"enrollment token used twice", func() codes.Code {
			for range 2 {
				k, _ := credentials.NewKey()
				_, err = credentialClient(t, f, nil).Enroll(ctx, connect.NewRequest(&credentialsv1.EnrollRequest{Csr: newCSR(t, k), EnrollmentToken: reuse}))
			}
			return code(err)
		}, codes.Unauthenticated},
		{"enrollment with neither token nor factory certificate", func() codes.Code {
			_, err := credentialClient(t, f, nil).Enroll(ctx, connect.NewRequest(&credentialsv1.EnrollRequest{Csr: newCSR(t, key)}))
			return code(err)
		}, codes.Unauthenticated},
		{"operator call without a credential", func() codes.Code {
			_, err := fleetv1connect.NewFleetServiceClient(f.HTTPClient(t), f.APIURL()).ListDevices(ctx, connect.NewRequest(&fleetv1.ListDevicesRequest{}))
			return code(err)
		}, codes.Unauthenticated},
		{"operator without the role: viewer adds a device", func() codes.Code {
			_, err := viewer.AddDevice(ctx, connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: "gw-9"}))
			return code(err)
		}, codes.PermissionDenied},
		{"operator without the role: viewer revokes a device", func() codes.Code {
			_, err := viewer.RevokeDevice(ctx, connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: "gw-1"}))
			return code(err)
		}, codes.PermissionDenied},
		{"device certificate as an operator certificate", func() codes.Code {
			_, err := deviceAsOperator.ListDevices(ctx, connect.NewRequest(&fleetv1.ListDevicesRequest{}))
			return code(err)
		}, codes.Unauthenticated},
		{"adding a revoked device", func() codes.Code {
			_, err := admin.AddDevice(ctx, connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: "gw-revoked"}))
			return code(err)
		}, codes.PermissionDenied},
		{"revoking a device that does not exist", func() codes.Code {
			_, err := admin.RevokeDevice(ctx, connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: "nobody"}))
			return code(err)
		}, codes.NotFound},

		// The legitimate ways in.
		{"enrolled device opens its stream", func() codes.Code { return syncCode(t, f, gw1.tls) }, codes.OK},
		{"enrolled device renews", func() codes.Code {
			_, err := credentialsv1.NewCredentialServiceClient(f.DeviceConn(t, gw1.tls)).RenewCertificate(ctx, &credentialsv1.RenewCertificateRequest{Csr: newCSR(t, gw1.key)})
			return code(err)
		}, codes.OK},
		{"development device keeps working", func() codes.Code { return syncCode(t, f, f.DeviceTLS(t, "dev-1")) }, codes.OK},
		{"bound token over its own connection", func() codes.Code { return download(t, gw1.tls, tok1.GetUrl(), tok1.GetToken(), "", fw1) }, codes.OK},
		{"bound token, Range resume", func() codes.Code { return download(t, gw1.tls, tok1.GetUrl(), tok1.GetToken(), "bytes=1024-", fw1) }, codes.OK},
		{"presigned URL without a client certificate", func() codes.Code { return download(t, noCertTLS, presigned.GetUrl(), "", "", fw1) }, codes.OK},
		{"operator API key reads a target", func() codes.Code { return download(t, noCertTLS, tok1.GetUrl(), viewerKey, "", fw1) }, codes.OK},
		{"viewer lists devices", func() codes.Code {
			_, err := viewer.ListDevices(ctx, connect.NewRequest(&fleetv1.ListDevicesRequest{}))
			return code(err)
		}, codes.OK},
		{"admin by operator certificate adds a device", func() codes.Code {
			_, err := operatorByCert.AddDevice(ctx, connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: "gw-10"}))
			return code(err)
		}, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.do(); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// enrollToken adds a device and returns its enrollment token.
func enrollToken(t *testing.T, f *ferrytest.Ferryd, id string) string {
	t.Helper()
	added, err := f.Fleet(t).AddDevice(context.Background(), connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: id}))
	if err != nil {
		t.Fatal(err)
	}
	return added.Msg.GetEnrollmentToken()
}

// TestRevocationClosesStreams revokes devices whose streams are open on
// this ferryd and on another one sharing the store: both streams end with
// PermissionDenied, the local one at once and the remote one at the other
// instance's next revocation refresh.
func TestRevocationClosesStreams(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Redis, nil)
	peer := f.StartPeer(t, func(cfg *server.Config) { cfg.Credentials.RevocationRefresh = 100 * time.Millisecond })
	ctx := context.Background()
	tests := []struct {
		name string
		on   *ferrytest.Ferryd
	}{
		{"stream on this instance", f},
		{"stream on another instance", peer},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := enroll(t, f, "gw-live-"+string(rune('a'+i)))
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			stream, err := devicev1.NewDeviceServiceClient(tt.on.DeviceConn(t, d.tls)).Sync(sctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{AgentVersion: "test"}}}); err != nil {
				t.Fatal(err)
			}
			// The stream is up once the server sends its first message.
			if _, err := stream.Recv(); err != nil {
				t.Fatalf("first message: %v", err)
			}
			if _, err := f.Fleet(t).RevokeDevice(ctx, connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: d.id, Reason: "test"})); err != nil {
				t.Fatal(err)
			}
			ended := make(chan error, 1)
			go func() {
				for {
					if _, err := stream.Recv(); err != nil {
						ended <- err
						return
					}
				}
			}()
			select {
			case err := <-ended:
				if status.Code(err) != codes.PermissionDenied {
					t.Errorf("stream ended with %v, want PermissionDenied", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the revoked device's stream is still open after 10s")
			}
			if got := syncCode(t, tt.on, d.tls); got != codes.Unavailable {
				t.Errorf("reconnect after revocation: %v, want Unavailable", got)
			}
		})
	}
}

// TestServingCertificateReload replaces ferryd's serving certificate on
// disk and checks that new handshakes on both ports get the new one,
// without a restart.
func TestServingCertificateReload(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) { cfg.Credentials.ServingCertCheck = 50 * time.Millisecond })
	served := func(addr string) *x509.Certificate {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost", Certificates: f.DeviceTLS(t, "dev-1").Certificates})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	before := served(f.APIAddr())
	ca, err := credentials.LoadCA(f.Dev.CACert, f.Dev.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := credentials.NewKey()
	next, err := ca.IssueServer([]string{"localhost", "127.0.0.1"}, key.Public(), 24*time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := credentials.WriteKeyFile(f.Dev.ServerKey, key); err != nil {
		t.Fatal(err)
	}
	if err := credentials.WriteCertFile(f.Dev.ServerCert, next); err != nil {
		t.Fatal(err)
	}
	for _, port := range []struct{ name, addr string }{{"API", f.APIAddr()}, {"device", f.DeviceAddr()}} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := served(port.addr)
			if got.Equal(next) {
				break
			}
			if !got.Equal(before) || time.Now().After(deadline) {
				t.Fatalf("%s port serves serial %v, want the replacement %v", port.name, got.SerialNumber, next.SerialNumber)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if syncCode(t, f, f.DeviceTLS(t, "dev-2")) != codes.OK {
		t.Error("devices cannot connect after the serving certificate was replaced")
	}
}
