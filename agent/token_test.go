package agent_test

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/agent/transport"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
)

// outageTokens is a real gRPC CredentialService on loopback that answers
// IssueDownloadToken with Unavailable, as ferryd does while its store is
// unreachable, for the first refusals calls, then issues ferryd's own
// token for the device.
type outageTokens struct {
	credentialsv1.UnimplementedCredentialServiceServer
	refusals int64
	calls    atomic.Int64
	ferryd   agent.Conn
}

func (s *outageTokens) IssueDownloadToken(ctx context.Context, req *credentialsv1.IssueDownloadTokenRequest) (*credentialsv1.IssueDownloadTokenResponse, error) {
	if s.calls.Add(1) <= s.refusals {
		return nil, status.Error(codes.Unavailable, "the device store is unavailable; retry later")
	}
	tok, err := s.ferryd.DownloadToken(ctx, req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	return &credentialsv1.IssueDownloadTokenResponse{Token: tok.Token, Url: tok.URL}, nil
}

// tokensVia is the device's Link to ferryd, with download tokens from
// another device port.
type tokensVia struct {
	agent.Link
	tokens agent.Link
}

func (l tokensVia) Dial(ctx context.Context, creds *agent.Credentials) (agent.Conn, error) {
	c, err := l.Link.Dial(ctx, creds)
	if err != nil {
		return nil, err
	}
	tc, err := l.tokens.Dial(ctx, creds)
	if err != nil {
		c.Close()
		return nil, err
	}
	return tokenConn{Conn: c, tokens: tc}, nil
}

type tokenConn struct {
	agent.Conn
	tokens agent.Conn
}

func (c tokenConn) DownloadToken(ctx context.Context, target string) (agent.DownloadToken, error) {
	return c.tokens.DownloadToken(ctx, target)
}

func (c tokenConn) Close() error {
	c.tokens.Close()
	return c.Conn.Close()
}

// TestDownloadTokenUnavailable: a download token refused as Unavailable
// is asked for again, with backoff, and neither fails the job nor uses up
// a download attempt (the device has one).
func TestDownloadTokenUnavailable(t *testing.T) {
	w := newWorld(t)
	d := w.newDevice(t, "tok-1")
	b := w.add(t, "gateway/2.0.0/fw.bin", 8<<10)

	cert, err := tls.LoadX509KeyPair(w.f.Dev.ServerCert, w.f.Dev.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	ferrydConn, err := w.link.Dial(t.Context(), d.creds)
	if err != nil {
		t.Fatal(err)
	}
	defer ferrydConn.Close()
	tokens := &outageTokens{refusals: 4, ferryd: ferrydConn}
	srv := grpc.NewServer(grpc.Creds(grpccreds.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})))
	credentialsv1.RegisterCredentialServiceServer(srv, tokens)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	defer srv.Stop()
	via := tokensVia{Link: w.link, tokens: transport.New(transport.Config{DeviceAddr: lis.Addr().String(), RootCAs: w.f.CAPool(t), ServerName: "localhost"})}

	version := w.setDesired(t, d, b, nil)
	stop := w.background(t, d, func(c *agent.Config) { c.Link, c.DownloadAttempts = via, 1 })
	dev := w.waitSettled(t, d, version)
	stop()
	if job := dev.GetJob(); job.GetStatus().String() != "JOB_STATUS_SUCCEEDED" {
		t.Fatalf("job %s %s %s: %s", job.GetStatus(), job.GetStep(), job.GetErrorCode(), job.GetMessage())
	}
	if got := tokens.calls.Load(); got != tokens.refusals+1 {
		t.Errorf("%d token requests, want %d refused and one issued", got, tokens.refusals)
	}
	if sha, committed := d.booted(); sha != b.GetSha256() || !committed {
		t.Errorf("the device boots %s (committed %v), want %s", shortSHA(sha), committed, shortSHA(b.GetSha256()))
	}
}
