// Package ferrytest starts real ferryd servers for tests and gives them
// real clients: devices over mutual TLS, operators over Connect.
package ferrytest

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/bearer"
	"github.com/ferryhq/ferry/internal/testredis"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/server"
)

// Backend names a store backend.
type Backend string

// The backends ferryd can run on.
const (
	Embedded Backend = "embedded"
	Redis    Backend = "redis"
)

// Backends lists every backend; tests of the whole server run on each.
var Backends = []Backend{Embedded, Redis}

// Ferryd is a ferryd running in the test process.
type Ferryd struct {
	*server.Server
	Dev credentials.DevFiles
	// Stop stops the server and returns Run's error; it is also called at
	// the end of the test.
	Stop func() error

	release releaser // Publish (repo.go)
}

// Start runs a ferryd on loopback ports with the development PKI and the
// given backend. edit may change the configuration first.
func Start(t testing.TB, backend Backend, edit func(*server.Config)) *Ferryd {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if _, ok := t.(*testing.B); ok {
		log = slog.New(slog.DiscardHandler) // keep benchmark output to results
	}
	return StartWithLog(t, backend, edit, log)
}

// StartWithLog is Start with the server logging to log.
func StartWithLog(t testing.TB, backend Backend, edit func(*server.Config), log *slog.Logger) *Ferryd {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.DeviceAddr, cfg.APIAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.TrustDomain = "ferry.test"
	// Rollouts move on quickly, and a crashed controller is replaced in
	// about a second.
	cfg.Rollouts.Tick, cfg.Rollouts.Resync, cfg.Rollouts.LeaseTTL = 50*time.Millisecond, 500*time.Millisecond, 1500*time.Millisecond
	// Tests stop at once unless they look at the stopping period.
	cfg.ShutdownDelay = 0
	if backend == Redis {
		cfg.RedisURL = testredis.URL(t)
		cfg.RedisPrefix = testredis.Prefix(t)
	}
	if edit != nil {
		edit(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, log)
	if err != nil {
		cancel()
		t.Fatalf("start ferryd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stopped := false
	var runErr error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				t.Error("ferryd did not stop")
			}
		}
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("ferryd: %v", err)
		}
	})
	dev, _ := srv.DevFiles()
	return &Ferryd{Server: srv, Dev: dev, Stop: stop}
}

// testWriter sends the server's log to the test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// CAPool returns the development CA as a certificate pool.
func (f *Ferryd) CAPool(t testing.TB) *x509.CertPool {
	t.Helper()
	certs, err := credentials.ReadCertFile(f.Dev.CACert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool
}

// OperatorToken returns the development operator's API key.
func (f *Ferryd) OperatorToken(t testing.TB) string {
	t.Helper()
	raw, err := os.ReadFile(f.Dev.OperatorToken)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(raw))
}

// DeviceTLS returns the TLS configuration of a development device.
func (f *Ferryd) DeviceTLS(t testing.TB, id string) *tls.Config {
	t.Helper()
	certPath, keyPath := f.Dev.DeviceCert(id)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{RootCAs: f.CAPool(t), Certificates: []tls.Certificate{cert}, ServerName: "localhost", MinVersion: tls.VersionTLS13}
}

// DeviceConn connects to the device port with tlsConfig.
func (f *Ferryd) DeviceConn(t testing.TB, tlsConfig *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(f.DeviceAddr(), grpc.WithTransportCredentials(grpccreds.NewTLS(tlsConfig)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Device is a device's open Sync stream.
type Device struct {
	t      testing.TB
	Stream grpc.BidiStreamingClient[devicev1.SyncRequest, devicev1.SyncResponse]
	cancel context.CancelFunc
	// ID, Key and Nonce sign reports: the device's id and certificate key,
	// and the nonce of the stream's Session.
	ID    string
	Key   crypto.Signer
	Nonce string
}

// OpenDevice opens development device id's stream and sends hello.
func (f *Ferryd) OpenDevice(t testing.TB, id string, hello *devicev1.Hello) *Device {
	t.Helper()
	return f.OpenDeviceOn(t, f, id, hello)
}

// OpenDeviceOn opens development device id's stream (credentials of f) on
// another ferryd that trusts the same CA, and sends hello.
func (f *Ferryd) OpenDeviceOn(t testing.TB, on *Ferryd, id string, hello *devicev1.Hello) *Device {
	t.Helper()
	return on.OpenDeviceWithTLS(t, id, f.DeviceTLS(t, id), hello)
}

// OpenDeviceWithTLS opens device id's stream on f with tlsConfig (the
// credentials of a device that enrolled through the API, say) and sends
// hello. Its first certificate's key signs the device's reports.
func (f *Ferryd) OpenDeviceWithTLS(t testing.TB, id string, tlsConfig *tls.Config, hello *devicev1.Hello) *Device {
	t.Helper()
	conn := f.DeviceConn(t, tlsConfig)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := devicev1.NewDeviceServiceClient(conn).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := &Device{t: t, Stream: stream, cancel: cancel, ID: id, Key: tlsConfig.Certificates[0].PrivateKey.(crypto.Signer)}
	d.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: hello}})
	session := d.Recv().GetSession()
	if session.GetNonce() == "" {
		t.Fatal("the stream did not start with a Session")
	}
	d.Nonce = session.GetNonce()
	return d
}

// DialDevice is OpenDevice for a test that expects failures (a store
// failing over): it returns the error of the stream's start instead of
// failing the test. Close the device when done with it.
func (f *Ferryd) DialDevice(t testing.TB, id string, hello *devicev1.Hello) (*Device, error) {
	tlsConfig := f.DeviceTLS(t, id)
	conn, err := grpc.NewClient(f.DeviceAddr(), grpc.WithTransportCredentials(grpccreds.NewTLS(tlsConfig)))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	context.AfterFunc(ctx, func() { conn.Close() })
	stream, err := devicev1.NewDeviceServiceClient(conn).Sync(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	d := &Device{t: t, Stream: stream, cancel: cancel, ID: id, Key: tlsConfig.Certificates[0].PrivateKey.(crypto.Signer)}
	if err := stream.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: hello}}); err != nil {
		cancel()
		return nil, err
	}
	msg, err := d.RecvErr()
	if err != nil || msg.GetSession().GetNonce() == "" {
		cancel()
		return nil, fmt.Errorf("no Session: %v, %v", msg, err)
	}
	d.Nonce = msg.GetSession().GetNonce()
	return d, nil
}

// SendReport signs r as the device would (an in-toto statement in a DSSE
// envelope, with the stream's nonce) and sends it.
func (d *Device) SendReport(r *devicev1.Report) {
	d.t.Helper()
	d.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{Envelope: d.Sign(r, d.Nonce)}}})
}

// Sign returns the DSSE envelope of r signed by the device with nonce.
func (d *Device) Sign(r *devicev1.Report, nonce string) []byte {
	d.t.Helper()
	p := attest.Report{
		Device:         d.ID,
		JobID:          r.GetJobId(),
		DesiredVersion: r.GetDesiredVersion(),
		Status:         strings.TrimPrefix(r.GetStatus().String(), "JOB_STATUS_"),
		ErrorCode:      r.GetErrorCode(),
		Message:        r.GetMessage(),
		Time:           time.Now().UTC(),
		Nonce:          nonce,
		Config:         r.GetReported().GetConfig(),
	}
	if s := r.GetStep(); s != devicev1.Step_STEP_UNSPECIFIED {
		p.Step = strings.TrimPrefix(s.String(), "STEP_")
	}
	if b := r.GetReported().GetBundle(); b != nil {
		p.Bundle = &attest.Bundle{TargetPath: b.GetTargetPath(), Length: b.GetLength(), SHA256: b.GetSha256()}
	}
	env, err := attest.Sign(d.Key, attest.NewStatement(p))
	if err != nil {
		d.t.Fatal(err)
	}
	return env
}

// Send sends msg or fails the test.
func (d *Device) Send(msg *devicev1.SyncRequest) {
	d.t.Helper()
	if err := d.Stream.Send(msg); err != nil {
		d.t.Fatalf("device send: %v", err)
	}
}

// Recv returns the next message that is not a Ping, failing the test after
// a timeout.
func (d *Device) Recv() *devicev1.SyncResponse {
	d.t.Helper()
	msg, err := d.RecvErr()
	if err != nil {
		d.t.Fatalf("device receive: %v", err)
	}
	return msg
}

// RecvErr returns the next message that is not a Ping, or the stream's
// error.
func (d *Device) RecvErr() (*devicev1.SyncResponse, error) {
	type result struct {
		msg *devicev1.SyncResponse
		err error
	}
	got := make(chan result, 1)
	go func() {
		for {
			m, err := d.Stream.Recv()
			if err == nil && m.GetPing() != nil {
				continue
			}
			got <- result{m, err}
			return
		}
	}()
	select {
	case r := <-got:
		return r.msg, r.err
	case <-time.After(10 * time.Second):
		d.cancel()
		return nil, io.ErrNoProgress
	}
}

// Close ends the device's stream.
func (d *Device) Close() { d.cancel() }

// HTTPClient returns an HTTP/2 client that trusts the development CA.
func (f *Ferryd) HTTPClient(t testing.TB) *http.Client {
	return &http.Client{Transport: &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"}}}
}

// APIURL is the base URL of the back-office port.
func (f *Ferryd) APIURL() string { return "https://" + f.APIAddr() }

// Bearer returns a client option that sends an operator API key.
func Bearer(key string) connect.ClientOption { return bearer.Token(key).Option() }

// StartPeer starts a second ferryd that shares f's Redis keys and
// credentials, as another instance behind the same load balancer.
func (f *Ferryd) StartPeer(t testing.TB, edit func(*server.Config)) *Ferryd {
	t.Helper()
	if f.Config().RedisURL == "" {
		t.Fatal("StartPeer needs a Redis-backed ferryd")
	}
	peer := Start(t, Redis, func(cfg *server.Config) {
		cfg.RedisURL, cfg.RedisPrefix = f.Config().RedisURL, f.Config().RedisPrefix
		cfg.TrustDomain = f.Config().TrustDomain
		cfg.TLSCertFile, cfg.TLSKeyFile = f.Dev.ServerCert, f.Dev.ServerKey
		cfg.DeviceCAFile, cfg.OperatorKeysFile = f.Dev.CACert, f.Dev.Operators
		if edit != nil {
			edit(cfg)
		}
	})
	peer.Dev = f.Dev // same credentials
	return peer
}

// Fleet returns a FleetService client with the development operator's
// credential; opts may add connect.WithGRPC() and the like.
func (f *Ferryd) Fleet(t testing.TB, opts ...connect.ClientOption) fleetv1connect.FleetServiceClient {
	opts = append([]connect.ClientOption{Bearer(f.OperatorToken(t))}, opts...)
	return fleetv1connect.NewFleetServiceClient(f.HTTPClient(t), f.APIURL(), opts...)
}

// AddOperator writes an extra operator key into the development PKI of a
// server that has not started yet; call it from Start's edit function. It
// returns the key.
func AddOperator(t testing.TB, cfg *server.Config, name string, role credentials.Role) string {
	t.Helper()
	dev, err := credentials.EnsureDev(filepath.Join(cfg.DataDir, "pki"), credentials.DevOptions{
		TrustDomain: cfg.TrustDomain, CertTTL: cfg.Dev.CertTTL, Hosts: cfg.Dev.Hosts, Devices: cfg.Dev.Devices,
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(dev.Operators)
	if err != nil {
		t.Fatal(err)
	}
	var keys []credentials.OperatorKey
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	key, err := credentials.NewAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	keys = append(keys, credentials.OperatorKey{Name: name, Role: role, KeySHA256: credentials.HashAPIKey(key)})
	if err := credentials.WriteOperatorKeys(dev.Operators, keys); err != nil {
		t.Fatal(err)
	}
	return key
}
