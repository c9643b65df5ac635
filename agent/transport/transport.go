// Package transport connects the device agent to ferryd: the device
// stream and the credential calls over gRPC with mutual TLS on the device
// port, enrollment over Connect on the API port, and HTTPS clients for the
// TUF repository. It implements agent.Link and agent.Enroller.
package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"google.golang.org/protobuf/types/known/timestamppb"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/agent"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
)

// Config names ferryd's ports and how to trust it.
type Config struct {
	// DeviceAddr is the device port, host:port.
	DeviceAddr string
	// APIURL is the back-office port's base URL, https://host:port.
	APIURL string
	// RootCAs verify ferryd's serving certificate.
	RootCAs *x509.CertPool
	// ServerName overrides the name checked in ferryd's certificate
	// (default: the host of each address).
	ServerName string
	// SmallBuffers turns off gRPC's per-connection read and write buffers
	// (about 64 KiB each): what a simulator with thousands of connections
	// in one process needs. Real devices keep the defaults.
	SmallBuffers bool
}

// Link is an agent.Link to one ferryd. It is safe for concurrent use and
// may serve many devices.
type Link struct{ cfg Config }

var _ agent.Link = (*Link)(nil)

// New returns a Link.
func New(cfg Config) *Link {
	cfg.APIURL = strings.TrimSuffix(cfg.APIURL, "/")
	return &Link{cfg: cfg}
}

func (l *Link) tlsConfig(addr string, creds *agent.Credentials) *tls.Config {
	name := l.cfg.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(addr)
	}
	c := &tls.Config{RootCAs: l.cfg.RootCAs, ServerName: name, MinVersion: tls.VersionTLS13}
	if creds != nil {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return creds.TLSCertificate(), nil
		}
	}
	return c
}

func (l *Link) apiHost() string {
	u, err := url.Parse(l.cfg.APIURL)
	if err != nil {
		return ""
	}
	return u.Host
}

// Dial implements agent.Link: one gRPC connection per call.
func (l *Link) Dial(_ context.Context, creds *agent.Credentials) (agent.Conn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(grpccreds.NewTLS(l.tlsConfig(l.cfg.DeviceAddr, creds)))}
	if l.cfg.SmallBuffers {
		opts = append(opts, grpc.WithReadBufferSize(0), grpc.WithWriteBufferSize(0), grpc.WithSharedWriteBuffer(true))
	}
	cc, err := grpc.NewClient(l.cfg.DeviceAddr, opts...)
	if err != nil {
		return nil, fmt.Errorf("device port %s: %w", l.cfg.DeviceAddr, err)
	}
	return &conn{cc: cc}, nil
}

// HTTPClient implements agent.Link.
func (l *Link) HTTPClient(creds *agent.Credentials) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:     l.tlsConfig(l.apiHost(), creds),
		ForceAttemptHTTP2:   true,
		TLSHandshakeTimeout: 30 * time.Second,
		IdleConnTimeout:     30 * time.Second,
	}}
}

// MetadataURL implements agent.Link.
func (l *Link) MetadataURL() string { return l.cfg.APIURL + "/tuf/metadata" }

// Enroller enrolls devices over Connect on the API port. With
// FactoryCert set and no token, the factory certificate authenticates.
type Enroller struct {
	Link        *Link
	FactoryCert *tls.Certificate
}

var _ agent.Enroller = Enroller{}

// Enroll implements agent.Enroller.
func (e Enroller) Enroll(ctx context.Context, csr []byte, token string) ([][]byte, error) {
	tc := e.Link.tlsConfig(e.Link.apiHost(), nil)
	if e.FactoryCert != nil {
		tc.Certificates = []tls.Certificate{*e.FactoryCert}
	}
	tr := &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	c := credentialsv1connect.NewCredentialServiceClient(&http.Client{Transport: tr}, e.Link.cfg.APIURL)
	resp, err := c.Enroll(ctx, connect.NewRequest(&credentialsv1.EnrollRequest{Csr: csr, EnrollmentToken: token}))
	if err != nil {
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			if token == "" {
				return nil, fmt.Errorf("%w (ferryd accepted no credential: give a one-time enrollment token from `ferryctl device add <id>`, with ferry-agent's --enrollment-token)", err)
			}
			return nil, fmt.Errorf("%w (the enrollment token was refused: each token works once, until it expires or the device is added again; get a new one with `ferryctl device add <id>`)", err)
		}
		return nil, err
	}
	return resp.Msg.GetCertificateChain(), nil
}

type conn struct{ cc *grpc.ClientConn }

func (c *conn) Close() error { return c.cc.Close() }

func (c *conn) Renew(ctx context.Context, csr []byte) ([][]byte, error) {
	resp, err := credentialsv1.NewCredentialServiceClient(c.cc).RenewCertificate(ctx, &credentialsv1.RenewCertificateRequest{Csr: csr})
	if err != nil {
		return nil, err
	}
	return resp.GetCertificateChain(), nil
}

func (c *conn) DownloadToken(ctx context.Context, target string) (agent.DownloadToken, error) {
	resp, err := credentialsv1.NewCredentialServiceClient(c.cc).IssueDownloadToken(ctx, &credentialsv1.IssueDownloadTokenRequest{TargetPath: target})
	if err != nil {
		return agent.DownloadToken{}, fmt.Errorf("download token: %w", unavailable(refusal(err)))
	}
	return agent.DownloadToken{Token: resp.GetToken(), URL: resp.GetUrl(), Expires: resp.GetExpireTime().AsTime()}, nil
}

// Sync implements agent.Conn. An error that says ferryd refuses the
// device's credential is marked agent.ErrRefused, here and in the
// stream's Recv.
func (c *conn) Sync(ctx context.Context, hello agent.Hello) (agent.Stream, error) {
	st, err := c.sync(ctx, hello)
	return st, refusal(err)
}

// certificateFailures are what a failed TLS certificate check says, as
// gRPC reports it in an Unavailable status: Go's certificate verification
// and the TLS alerts about certificates (crypto/tls alert texts).
var certificateFailures = []string{
	"tls: failed to verify certificate", "tls: bad certificate", "tls: unknown certificate authority",
	"tls: revoked certificate", "tls: expired certificate", "tls: unknown certificate", "tls: certificate required",
}

// refusal marks err agent.ErrRefused when ferryd refused the credential:
// Unauthenticated, PermissionDenied, or a connection that failed on a
// certificate check.
func refusal(err error) error {
	if err == nil {
		return nil
	}
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return &refusedError{err: err}
	case codes.Unavailable:
		msg := status.Convert(err).Message()
		for _, f := range certificateFailures {
			if strings.Contains(msg, f) {
				return &refusedError{err: err}
			}
		}
	}
	return err
}

// unavailable marks err agent.ErrUnavailable when gRPC says Unavailable
// and the cause is not a refused certificate (already marked by refusal):
// ferryd's store is unreachable, or ferryd cannot be reached.
func unavailable(err error) error {
	if err == nil || errors.Is(err, agent.ErrRefused) || status.Code(err) != codes.Unavailable {
		return err
	}
	return &unavailableError{err: err}
}

type unavailableError struct{ err error }

func (e *unavailableError) Error() string        { return e.err.Error() }
func (e *unavailableError) Unwrap() error        { return e.err }
func (e *unavailableError) Is(target error) bool { return target == agent.ErrUnavailable }

type refusedError struct{ err error }

func (e *refusedError) Error() string        { return e.err.Error() }
func (e *refusedError) Unwrap() error        { return e.err }
func (e *refusedError) Is(target error) bool { return target == agent.ErrRefused }

func (c *conn) sync(ctx context.Context, hello agent.Hello) (agent.Stream, error) {
	s, err := devicev1.NewDeviceServiceClient(c.cc).Sync(ctx)
	if err != nil {
		return nil, err
	}
	st := &stream{s: s}
	if err := s.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{
		AgentVersion: hello.AgentVersion, LastAppliedDesiredVersion: hello.LastApplied, Reported: stateToProto(hello.State),
		Attributes: hello.Attributes,
	}}}); err != nil {
		return nil, err
	}
	for {
		m, err := s.Recv()
		if err != nil {
			return nil, err
		}
		if session := m.GetSession(); session != nil {
			st.nonce = session.GetNonce()
			return st, nil
		}
		if m.GetPing() == nil {
			return nil, errors.New("the stream did not start with a Session")
		}
	}
}

type stream struct {
	s     grpc.BidiStreamingClient[devicev1.SyncRequest, devicev1.SyncResponse]
	nonce string
}

func (s *stream) Nonce() string { return s.nonce }

func (s *stream) Recv() (agent.Event, error) {
	for {
		m, err := s.s.Recv()
		if err != nil {
			return agent.Event{}, refusal(err)
		}
		switch msg := m.GetMessage().(type) {
		case *devicev1.SyncResponse_Ping:
			return agent.Event{Ping: max(msg.Ping.GetId(), 1)}, nil
		case *devicev1.SyncResponse_Delta:
			return agent.Event{Delta: deltaFromProto(msg.Delta)}, nil
		case *devicev1.SyncResponse_Accepted:
			a := msg.Accepted
			return agent.Event{Accepted: &agent.Accepted{JobID: a.GetJobId(), DesiredVersion: a.GetDesiredVersion(), Superseded: a.GetSuperseded()}}, nil
		case *devicev1.SyncResponse_Rejected:
			r := msg.Rejected
			return agent.Event{Rejected: &agent.Rejected{
				JobID: r.GetJobId(), DesiredVersion: r.GetDesiredVersion(),
				Code: strings.TrimPrefix(r.GetCode().String(), "REJECT_CODE_"), Reason: r.GetReason(),
				CurrentDesiredVersion: r.GetCurrentDesiredVersion(),
			}}, nil
		}
		// Unknown messages from a newer server are skipped.
	}
}

func (s *stream) SendProgress(p agent.Progress) error {
	return s.s.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Progress{Progress: &devicev1.Progress{
		JobId: p.JobID, DesiredVersion: p.DesiredVersion, Step: devicev1.Step(p.Step), Percent: p.Percent,
		DownloadMethod: devicev1.DownloadMethod(p.Download.Method), BytesDownloaded: p.Download.Bytes,
		Code: p.Code, Message: p.Message, Consent: consentToProto(p.Consent),
	}}})
}

func consentToProto(c *agent.Consent) *devicev1.Consent {
	if c == nil {
		return nil
	}
	out := &devicev1.Consent{Decision: devicev1.ConsentDecision(c.Decision), Actor: c.Actor, Action: c.Action,
		DecideTime: timestamppb.New(c.At)}
	if !c.DeferredUntil.IsZero() {
		out.DeferredUntil = timestamppb.New(c.DeferredUntil)
	}
	return out
}

func (s *stream) SendInventory(attributes map[string]string) error {
	return s.s.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Inventory{Inventory: &devicev1.Inventory{Attributes: attributes}}})
}

func (s *stream) SendReport(envelope []byte) error {
	return s.s.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{Envelope: envelope}}})
}

func (s *stream) Drain(ctx context.Context) error {
	if err := s.s.CloseSend(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := s.s.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *stream) Ack(ping, desiredVersion uint64) error {
	ack := &devicev1.Ack{}
	if ping != 0 {
		ack.Of = &devicev1.Ack_PingId{PingId: ping}
	} else {
		ack.Of = &devicev1.Ack_DesiredVersion{DesiredVersion: desiredVersion}
	}
	return s.s.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Ack{Ack: ack}})
}

func deltaFromProto(d *devicev1.Delta) *agent.Delta {
	doc := d.GetDesired()
	out := &agent.Delta{JobID: d.GetJobId(), DesiredVersion: d.GetDesiredVersion(), Desired: agent.Desired{
		Forced: doc.GetForced(), Config: doc.GetConfig(),
	}}
	if c := doc.GetConsent(); c != nil && (c.GetBeforeInstall() || c.GetBeforeReboot()) {
		out.Desired.Consent = &agent.ConsentPolicy{BeforeInstall: c.GetBeforeInstall(), BeforeReboot: c.GetBeforeReboot(),
			MaxDeferral: c.GetMaxDeferral().AsDuration()}
	}
	if b := doc.GetBundle(); b != nil && b.GetTargetPath() != "" {
		out.Desired.Bundle = &agent.Bundle{TargetPath: b.GetTargetPath(), Length: b.GetLength(), SHA256: b.GetSha256()}
	}
	return out
}

func stateToProto(s agent.State) *devicev1.ReportedState {
	r := &devicev1.ReportedState{Config: s.Config}
	if b := s.Bundle; b != nil {
		r.Bundle = &devicev1.Bundle{TargetPath: b.TargetPath, Length: b.Length, Sha256: b.SHA256}
	}
	return r
}
