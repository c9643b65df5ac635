package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/credentials"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/tuf"
)

// credentialsState is the credential broker as ferryd wires it: the broker
// (enrollment, renewal, revocation), the download tokens and their
// authorizer, operator certificates and the reloadable serving
// certificate.
type credentialsState struct {
	cfg           Config
	log           *slog.Logger
	broker        *credentials.Broker
	keys          *credentials.Keyring // download token keys
	tokens        *credentials.Tokens
	downloads     *credentials.Downloads
	operatorCerts *credentials.OperatorCerts // nil: API keys only
	serving       *credentials.KeyPairReloader
	revoked       *credentials.RevocationSet
	sessions      *sessions
	replica       *replica.Service
	downloadBase  string
	// deviceRoots are the device CAs; apiClientCAs are every CA whose
	// client certificates the API port accepts in the handshake (device,
	// operator, manufacturer); which one counts is decided per call.
	deviceRoots  *x509.CertPool
	apiClientCAs *x509.CertPool
}

// newCredentials loads the key material cfg names and builds the broker on
// the store.
func newCredentials(ctx context.Context, cfg Config, log *slog.Logger, st store.Credentials, rep *replica.Service, ss *sessions) (*credentialsState, error) {
	c := &credentialsState{cfg: cfg, log: log, sessions: ss, replica: rep}
	var err error
	if c.serving, err = credentials.NewKeyPairReloader(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.Credentials.ServingCertCheck); err != nil {
		return nil, err
	}
	bc := credentials.BrokerConfig{
		TrustDomain:   cfg.TrustDomain,
		CertTTL:       cfg.Credentials.DeviceCertTTL,
		EnrollmentTTL: cfg.Credentials.EnrollmentTTL,
		Store:         st,
		Logger:        log,
		Register: func(ctx context.Context, id string, labels map[string]string) error {
			_, err := rep.Register(ctx, id, labels)
			return err
		},
	}
	if cfg.DeviceIssuerCertFile != "" {
		issuer, err := credentials.LoadCA(cfg.DeviceIssuerCertFile, cfg.DeviceIssuerKeyFile)
		if err != nil {
			return nil, fmt.Errorf("device issuer: %w", err)
		}
		chain, err := credentials.ReadCertFile(cfg.DeviceIssuerCertFile)
		if err != nil {
			return nil, fmt.Errorf("device issuer: %w", err)
		}
		bc.Issuer, bc.IssuerChain = issuer, chain
	}
	deviceCAs, err := credentials.ReadCertFile(cfg.DeviceCAFile)
	if err != nil {
		return nil, fmt.Errorf("device CA: %w", err)
	}
	c.deviceRoots, c.apiClientCAs = certPool(deviceCAs), certPool(deviceCAs)
	if cfg.ManufacturerCAFile != "" {
		cas, err := credentials.ReadCertFile(cfg.ManufacturerCAFile)
		if err != nil {
			return nil, fmt.Errorf("manufacturer CA: %w", err)
		}
		bc.Manufacturers = certPool(cas)
		for _, ca := range cas {
			c.apiClientCAs.AddCert(ca)
		}
	}
	if cfg.OperatorCAFile != "" {
		cas, err := credentials.ReadCertFile(cfg.OperatorCAFile)
		if err != nil {
			return nil, fmt.Errorf("operator CA: %w", err)
		}
		for _, ca := range cas {
			if slices.ContainsFunc(deviceCAs, ca.Equal) {
				return nil, errors.New("operator CA: must not be a device CA, or every device would be an operator")
			}
			c.apiClientCAs.AddCert(ca)
		}
		c.operatorCerts = credentials.NewOperatorCerts(cas, nil)
	}
	c.revoked = credentials.NewRevocationSet(st)
	if _, err := c.revoked.Refresh(ctx); err != nil {
		return nil, err
	}
	bc.Revoked = c.revoked
	if c.broker, err = credentials.NewBroker(bc); err != nil {
		return nil, err
	}
	c.keys, err = credentials.NewKeyring(ctx, credentials.KeyringConfig{
		Secrets: st, Refresh: cfg.Credentials.DownloadKeyRefresh, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if c.tokens, err = credentials.NewTokens(c.keys, nil); err != nil {
		return nil, err
	}
	c.downloads = &credentials.Downloads{Tokens: c.tokens, Revoked: c.revoked, Used: st}
	c.downloadBase = strings.TrimSuffix(cfg.Credentials.DownloadURL, "/") + "/"
	return c, nil
}

// listening sets the default download URL from the API port's address
// once it is bound (the configured port may be 0).
func (c *credentialsState) listening(api net.Addr) {
	if c.cfg.Credentials.DownloadURL != "" {
		return
	}
	host, _, _ := net.SplitHostPort(c.cfg.APIAddr)
	_, port, _ := net.SplitHostPort(api.String())
	c.downloadBase = "https://" + net.JoinHostPort(host, port) + tufTargetsPath
}

// tlsStateKey carries the request's TLS connection state to Connect
// handlers and interceptors.
type tlsStateKey struct{}

// withTLSState puts each request's TLS state in its context.
func withTLSState(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil {
			r = r.WithContext(context.WithValue(r.Context(), tlsStateKey{}, r.TLS))
		}
		h.ServeHTTP(w, r)
	})
}

func tlsStateFromContext(ctx context.Context) *tls.ConnectionState {
	s, _ := ctx.Value(tlsStateKey{}).(*tls.ConnectionState)
	return s
}

// credentialAPI serves CredentialService on the back-office port, where
// devices without an operational certificate enroll over
// server-authenticated TLS.
type credentialAPI struct {
	credentialsv1connect.UnimplementedCredentialServiceHandler
	creds   *credentialsState
	metrics *metrics
}

var _ credentialsv1connect.CredentialServiceHandler = (*credentialAPI)(nil)

func (a *credentialAPI) Enroll(ctx context.Context, req *connect.Request[credentialsv1.EnrollRequest]) (*connect.Response[credentialsv1.EnrollResponse], error) {
	var (
		issued credentials.Issued
		err    error
		method = "none"
	)
	if tok := req.Msg.GetEnrollmentToken(); tok != "" {
		method = "token"
		issued, err = a.creds.broker.Enroll(ctx, req.Msg.GetCsr(), tok)
	} else if st := tlsStateFromContext(ctx); st != nil && len(st.PeerCertificates) > 0 {
		method = "factory"
		issued, err = a.creds.broker.EnrollFactory(ctx, req.Msg.GetCsr(), st.PeerCertificates)
	} else {
		err = fmt.Errorf("%w: an enrollment token or a factory certificate is required", credentials.ErrUnauthenticated)
	}
	a.metrics.enrollments.WithLabelValues(method, outcome(err)).Inc()
	if err != nil {
		return nil, connectError(ctx, a.creds.log, err)
	}
	return connect.NewResponse(&credentialsv1.EnrollResponse{
		CertificateChain: chainDER(issued.Chain), ExpireTime: timestamppb.New(issued.Leaf().NotAfter),
	}), nil
}

var errUseDevicePort = errors.New("call this on the device port, over mutual TLS with the device certificate")

func (a *credentialAPI) RenewCertificate(context.Context, *connect.Request[credentialsv1.RenewCertificateRequest]) (*connect.Response[credentialsv1.RenewCertificateResponse], error) {
	return nil, connect.NewError(connect.CodeFailedPrecondition, errUseDevicePort)
}

func (a *credentialAPI) IssueDownloadToken(context.Context, *connect.Request[credentialsv1.IssueDownloadTokenRequest]) (*connect.Response[credentialsv1.IssueDownloadTokenResponse], error) {
	return nil, connect.NewError(connect.CodeFailedPrecondition, errUseDevicePort)
}

func chainDER(chain []*x509.Certificate) [][]byte {
	out := make([][]byte, len(chain))
	for i, c := range chain {
		out[i] = c.Raw
	}
	return out
}

// credentialDevice serves CredentialService on the device port: renewal
// and download tokens for a device authenticated by its certificate.
type credentialDevice struct {
	credentialsv1.UnimplementedCredentialServiceServer
	creds   *credentialsState
	metrics *metrics
}

func (d *credentialDevice) Enroll(context.Context, *credentialsv1.EnrollRequest) (*credentialsv1.EnrollResponse, error) {
	return nil, status.Error(codes.FailedPrecondition, "enroll on the API port: a device that can reach the device port is enrolled already")
}

func (d *credentialDevice) RenewCertificate(ctx context.Context, req *credentialsv1.RenewCertificateRequest) (*credentialsv1.RenewCertificateResponse, error) {
	id, ok := deviceFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no device identity")
	}
	issued, err := d.creds.broker.Renew(ctx, id, req.GetCsr())
	d.metrics.renewals.WithLabelValues(outcome(err)).Inc()
	if err != nil {
		return nil, grpcError(ctx, d.creds.log, err)
	}
	d.creds.log.InfoContext(ctx, "certificate renewed", "device", id, "expires", issued.Leaf().NotAfter)
	return &credentialsv1.RenewCertificateResponse{
		CertificateChain: chainDER(issued.Chain), ExpireTime: timestamppb.New(issued.Leaf().NotAfter),
	}, nil
}

func (d *credentialDevice) IssueDownloadToken(ctx context.Context, req *credentialsv1.IssueDownloadTokenRequest) (*credentialsv1.IssueDownloadTokenResponse, error) {
	id, ok := deviceFromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no device identity")
	}
	leaf := peerLeaf(ctx)
	if leaf == nil {
		return nil, status.Error(codes.Unauthenticated, "a verified client certificate is required")
	}
	target := req.GetTargetPath()
	if target == "" || len(target) > 1024 {
		return nil, status.Error(codes.InvalidArgument, "target_path: want the TUF target path of the desired bundle")
	}
	if err := d.creds.broker.CheckNotRevoked(ctx, id); err != nil {
		return nil, grpcError(ctx, d.creds.log, err)
	}
	dev, err := d.creds.replica.GetDevice(ctx, id)
	if err != nil {
		return nil, grpcError(ctx, d.creds.log, err)
	}
	b := dev.Desired.Bundle
	if b.TargetPath != target {
		return nil, status.Error(codes.PermissionDenied, "target_path is not the bundle of this device's desired state")
	}
	now := time.Now()
	g := credentials.DownloadGrant{
		DeviceID: id, Target: target, SHA256: b.SHA256, Length: b.Length,
		SingleUse: req.GetSingleUse(), Presigned: req.GetPresigned(),
		ExpiresAt: now.Add(d.creds.cfg.Credentials.DownloadTokenTTL),
	}
	if leaf.NotAfter.Before(g.ExpiresAt) {
		g.ExpiresAt = leaf.NotAfter // never outlive the certificate it is bound to
	}
	if !g.Presigned {
		g.CertThumbprint = credentials.Thumbprint(leaf)
	}
	token, g, err := d.creds.tokens.Issue(ctx, g)
	if err != nil {
		return nil, grpcError(ctx, d.creds.log, err)
	}
	u := d.creds.targetURL(target, b.SHA256)
	if g.Presigned {
		u += "?" + url.Values{downloadTokenParam: {token}}.Encode()
	}
	return &credentialsv1.IssueDownloadTokenResponse{Token: token, ExpireTime: timestamppb.New(g.ExpiresAt), Url: u}, nil
}

// targetURL is where a target is downloaded from: its consistent-snapshot
// name under the targets path.
func (c *credentialsState) targetURL(target, sha256 string) string {
	if sha256 != "" {
		target = tuf.HashedTargetName(target, sha256)
	}
	segs := strings.Split(target, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return c.downloadBase + strings.Join(segs, "/")
}
