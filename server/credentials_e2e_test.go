package server_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// TestEnrollDownload is the credential broker end to end, on each store
// backend, against a real ferryd over real TLS: a release engineer
// publishes a bundle; an admin adds a device; the device enrolls with the
// one-time token and a CSR over server-authenticated TLS, opens its stream
// with the short-lived certificate it got, receives the desired state
// naming the bundle, asks for a download token over mutual TLS, downloads
// the bundle over HTTPS (interrupted and resumed with Range), fetches it
// again through go-tuf's updater, and reports, signed with its own key.
// The token is refused everywhere it does not belong, and after the
// device is revoked.
func TestEnrollDownload(t *testing.T) {
	const (
		certTTL  = 2 * time.Hour
		tokenTTL = 90 * time.Second
		target   = "gateway/2.0.0/fw.bin"
	)
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			ctx := context.Background()
			f := ferrytest.Start(t, backend, func(cfg *server.Config) {
				cfg.Credentials.DeviceCertTTL = certTTL
				cfg.Credentials.DownloadTokenTTL = tokenTTL
			})

			// The release engineer publishes the bundle.
			fx := newRepoFixture(t, f, tuftest.Options{BinBits: 2})
			firmware := make([]byte, 300<<10)
			rand.Read(firmware)
			fx.add(t, target, firmware)
			published, err := fx.client.GetBundle(ctx, connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: target}))
			if err != nil {
				t.Fatalf("GetBundle: %v", err)
			}
			digest := published.Msg.GetBundle().GetHashes()["sha256"]
			if digest != tuftest.SHA256(firmware) {
				t.Fatalf("published digest %s, want %s", digest, tuftest.SHA256(firmware))
			}

			// Enrollment: the device's key never leaves it; the identity comes
			// from the token.
			start := time.Now()
			gw := enroll(t, f, "gw-e2e")
			other := enroll(t, f, "gw-e2e-other")
			leaf := gw.tls.Certificates[0].Leaf
			if id, err := credentials.DeviceID("ferry.test", leaf); err != nil || id != "gw-e2e" {
				t.Fatalf("enrolled certificate names %q (%v), want gw-e2e", id, err)
			}
			if got := leaf.URIs[0].String(); got != "spiffe://ferry.test/device/gw-e2e" {
				t.Errorf("URI SAN %s", got)
			}
			if !leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(gw.key.Public()) {
				t.Error("the certificate is not for the key the device made")
			}
			if life := leaf.NotAfter.Sub(start); life > certTTL+time.Minute || life < certTTL-time.Minute {
				t.Errorf("certificate lives %v, want the configured %v", life.Round(time.Second), certTTL)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: f.CAPool(t), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("the enrolled certificate does not chain to the device CA: %v", err)
			}

			// The stream, over mutual TLS with the new certificate; token
			// requests go over the same connection.
			conn := f.DeviceConn(t, gw.tls)
			s := openStream(t, conn)
			if _, err := f.Fleet(t).SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
				DeviceId: "gw-e2e",
				Document: &devicev1.DesiredDocument{Bundle: &devicev1.Bundle{
					TargetPath: target, Length: published.Msg.GetBundle().GetLength(), Sha256: digest,
				}},
			})); err != nil {
				t.Fatalf("SetDesiredState: %v", err)
			}
			delta := s.recv(t).GetDelta()
			if b := delta.GetDesired().GetBundle(); b.GetTargetPath() != target || b.GetSha256() != digest || b.GetLength() != uint64(len(firmware)) {
				t.Fatalf("delta names %v, want the published bundle", b)
			}

			// The download token, bound to this certificate.
			creds := credentialsv1.NewCredentialServiceClient(conn)
			tok, err := creds.IssueDownloadToken(ctx, &credentialsv1.IssueDownloadTokenRequest{TargetPath: target})
			if err != nil {
				t.Fatalf("IssueDownloadToken: %v", err)
			}
			if exp := tok.GetExpireTime().AsTime(); exp.After(time.Now().Add(tokenTTL)) || exp.Before(start.Add(tokenTTL-time.Minute)) {
				t.Errorf("token expires %v, want in the configured %v", exp, tokenTTL)
			}
			wantURL := f.APIURL() + "/tuf/targets/gateway/2.0.0/" + digest + ".fw.bin"
			if tok.GetUrl() != wantURL {
				t.Fatalf("download URL %s, want %s", tok.GetUrl(), wantURL)
			}

			// Download over HTTPS: the connection drops part way, and the
			// device resumes where it stopped.
			got := resumedDownload(t, gw.tls, tok.GetUrl(), tok.GetToken(), 100<<10)
			if sum := sha256.Sum256(got); !bytes.Equal(got, firmware) || hex.EncodeToString(sum[:]) != digest {
				t.Fatalf("downloaded %d bytes with SHA-256 %x, want the %d published bytes, %s", len(got), sum, len(firmware), digest)
			}

			// The same bundle through go-tuf's updater: metadata with the
			// device certificate, the target with the token as well.
			withToken := fx.tufClient(t, &http.Client{Transport: targetToken{token: tok.GetToken(), next: &http2.Transport{TLSClientConfig: gw.tls}}})
			u, err := withToken.refresh()
			if err != nil {
				t.Fatalf("updater refresh: %v", err)
			}
			info, err := u.GetTargetInfo(target)
			if err != nil {
				t.Fatalf("GetTargetInfo: %v", err)
			}
			path, data, err := u.DownloadTarget(info, "", "")
			if err != nil {
				t.Fatalf("DownloadTarget: %v", err)
			}
			if onDisk, err := os.ReadFile(path); err != nil || !bytes.Equal(data, firmware) || !bytes.Equal(onDisk, firmware) {
				t.Fatalf("the updater's target differs from the published bundle (%v)", err)
			}
			// Without the token, the updater verifies metadata but gets no
			// target.
			noToken := fx.tufClient(t, &http.Client{Transport: &http2.Transport{TLSClientConfig: gw.tls}})
			if u, err = noToken.refresh(); err != nil {
				t.Fatalf("refresh with the device certificate alone: %v", err)
			}
			if info, err = u.GetTargetInfo(target); err != nil {
				t.Fatal(err)
			}
			if _, _, err := u.DownloadTarget(info, "", ""); err == nil {
				t.Fatal("the updater downloaded a target without a download token")
			}

			// The device installs and reports, signed with its own key.
			bundle := delta.GetDesired().GetBundle()
			env, err := attest.Sign(gw.key, attest.NewStatement(attest.Report{
				Device: "gw-e2e", JobID: delta.GetJobId(), DesiredVersion: delta.GetDesiredVersion(), Status: "SUCCEEDED",
				Time: time.Now().UTC(), Nonce: s.nonce,
				Bundle: &attest.Bundle{TargetPath: bundle.GetTargetPath(), Length: bundle.GetLength(), SHA256: bundle.GetSha256()},
			}))
			if err != nil {
				t.Fatal(err)
			}
			s.send(t, &devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{Envelope: env}}})
			if acc := s.recv(t).GetAccepted(); acc.GetDesiredVersion() != delta.GetDesiredVersion() {
				t.Fatalf("report answered %v, want Accepted", acc)
			}
			dev, err := f.Fleet(t).GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "gw-e2e"}))
			if err != nil {
				t.Fatal(err)
			}
			if runs := dev.Msg.GetDevice().GetReported().GetState().GetBundle(); runs.GetSha256() != digest {
				t.Fatalf("the fleet sees gw-e2e running %v, want %s", runs, digest)
			}

			// The valid token, on the real target, wherever it does not belong.
			noCert := &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost", MinVersion: tls.VersionTLS13}
			refusals := []struct {
				name   string
				do     func() codes.Code
				want   codes.Code
				before func() // runs first, when set
			}{
				{name: "over another device's connection", do: func() codes.Code {
					return download(t, other.tls, tok.GetUrl(), tok.GetToken(), "", firmware)
				}, want: codes.PermissionDenied},
				{name: "another device's Range resume", do: func() codes.Code {
					return download(t, other.tls, tok.GetUrl(), tok.GetToken(), "bytes=1000-", firmware)
				}, want: codes.PermissionDenied},
				{name: "without a client certificate", do: func() codes.Code {
					return download(t, noCert, tok.GetUrl(), tok.GetToken(), "", firmware)
				}, want: codes.PermissionDenied},
				{name: "as a pre-signed URL", do: func() codes.Code {
					return download(t, noCert, tok.GetUrl()+"?token="+tok.GetToken(), "", "", firmware)
				}, want: codes.PermissionDenied},
				{name: "the other device asks for a token for it", do: func() codes.Code {
					_, err := issueToken(t, f, other, &credentialsv1.IssueDownloadTokenRequest{TargetPath: target})
					return code(err)
				}, want: codes.PermissionDenied},
				{name: "its own connection, still good", do: func() codes.Code {
					return download(t, gw.tls, tok.GetUrl(), tok.GetToken(), "bytes=4096-8191", firmware)
				}, want: codes.OK},
				{name: "after the device is revoked", before: func() {
					if _, err := f.Fleet(t).RevokeDevice(ctx, connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: "gw-e2e", Reason: "test"})); err != nil {
						t.Fatal(err)
					}
					if err := s.end(t); status.Code(err) != codes.PermissionDenied {
						t.Errorf("the revoked device's stream ended with %v, want PermissionDenied", err)
					}
				}, do: func() codes.Code {
					return download(t, gw.tls, tok.GetUrl(), tok.GetToken(), "bytes=1000-", firmware)
				}, want: codes.PermissionDenied},
			}
			for _, r := range refusals {
				t.Run(r.name, func(t *testing.T) {
					if r.before != nil {
						r.before()
					}
					if got := r.do(); got != r.want {
						t.Errorf("got %v, want %v", got, r.want)
					}
				})
			}
		})
	}
}

// deviceStream is an enrolled device's open Sync stream.
type deviceStream struct {
	stream interface {
		Send(*devicev1.SyncRequest) error
		Recv() (*devicev1.SyncResponse, error)
	}
	nonce string
}

// openStream opens Sync on conn, sends Hello and reads the Session.
func openStream(t *testing.T, conn *grpc.ClientConn) *deviceStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := devicev1.NewDeviceServiceClient(conn).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := &deviceStream{stream: stream}
	s.send(t, &devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{AgentVersion: "ferry-agent/test"}}})
	session := s.recv(t).GetSession()
	if session.GetNonce() == "" {
		t.Fatal("the stream did not start with a Session")
	}
	s.nonce = session.GetNonce()
	return s
}

func (s *deviceStream) send(t *testing.T, m *devicev1.SyncRequest) {
	t.Helper()
	if err := s.stream.Send(m); err != nil {
		t.Fatalf("device send: %v", err)
	}
}

// recv returns the next message that is not a Ping.
func (s *deviceStream) recv(t *testing.T) *devicev1.SyncResponse {
	t.Helper()
	for {
		m, err := s.stream.Recv()
		if err != nil {
			t.Fatalf("device receive: %v", err)
		}
		if m.GetPing() == nil {
			return m
		}
	}
}

// end waits for the stream to end and returns its error.
func (s *deviceStream) end(t *testing.T) error {
	t.Helper()
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := s.stream.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	select {
	case err := <-ended:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the stream is still open after 10s")
		return nil
	}
}

// resumedDownload fetches url with the bound token over mutual TLS,
// stops after cut bytes as a dropped connection would, and fetches the
// rest with a Range request guarded by If-Range.
func resumedDownload(t *testing.T, tlsConfig *tls.Config, url, token string, cut int) []byte {
	t.Helper()
	client := &http.Client{Transport: &http2.Transport{TLSClientConfig: tlsConfig}}
	defer client.CloseIdleConnections()
	get := func(header http.Header) *http.Response {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = header
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		return resp
	}
	first := get(http.Header{})
	if first.StatusCode != http.StatusOK {
		t.Fatalf("first GET: %s", first.Status)
	}
	part := make([]byte, cut)
	if _, err := io.ReadFull(first.Body, part); err != nil {
		t.Fatalf("first GET: %v", err)
	}
	first.Body.Close() // the connection drops
	etag := first.Header.Get("ETag")

	rest := get(http.Header{"Range": {fmt.Sprintf("bytes=%d-", cut)}, "If-Range": {etag}})
	defer rest.Body.Close()
	if rest.StatusCode != http.StatusPartialContent {
		t.Fatalf("resume: %s, want 206", rest.Status)
	}
	if cr := rest.Header.Get("Content-Range"); !strings.HasPrefix(cr, fmt.Sprintf("bytes %d-", cut)) {
		t.Fatalf("resume: Content-Range %q", cr)
	}
	tail, err := io.ReadAll(rest.Body)
	if err != nil {
		t.Fatal(err)
	}
	return append(part, tail...)
}

// targetToken sends the download token with target requests; metadata
// requests go with the device certificate alone.
type targetToken struct {
	token string
	next  http.RoundTripper
}

func (tt targetToken) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/tuf/targets/") {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+tt.token)
	}
	return tt.next.RoundTrip(r)
}
