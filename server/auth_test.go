package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpccreds "google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/server"
)

// TestDevicePortRefuses: only a certificate of the device CA that names a
// device of the trust domain opens a stream.
func TestDevicePortRefuses(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	now := time.Now()
	otherCA, err := credentials.NewCA("another CA", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	devCA, err := credentials.LoadCA(f.Dev.CACert, f.Dev.CAKey)
	if err != nil {
		t.Fatal(err)
	}
	withCert := func(ca *credentials.CA, trustDomain string) *tls.Config {
		key, _ := credentials.NewKey()
		cert, err := ca.IssueDevice(trustDomain, "dev-1", key.Public(), time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		cfg := f.DeviceTLS(t, "dev-1")
		cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}
		return cfg
	}
	noCert := f.DeviceTLS(t, "dev-1")
	noCert.Certificates = nil
	tls12 := f.DeviceTLS(t, "dev-1")
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	tests := []struct {
		name string
		tls  *tls.Config
		code codes.Code // Unavailable: the TLS handshake failed
	}{
		{"no certificate", noCert, codes.Unavailable},
		{"certificate from another CA", withCert(otherCA, "ferry.test"), codes.Unavailable},
		{"TLS 1.2", tls12, codes.Unavailable},
		{"another trust domain", withCert(devCA, "other.test"), codes.Unauthenticated},
		{"valid", f.DeviceTLS(t, "dev-1"), codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := f.DeviceConn(t, tt.tls)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stream, err := devicev1.NewDeviceServiceClient(conn).Sync(ctx)
			if err == nil {
				err = stream.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{}}})
			}
			if err == io.EOF || err == nil && tt.code != codes.OK {
				_, err = stream.Recv() // the stream's status
			}
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code %v (%v), want %v", got, err, tt.code)
			}
		})
	}
}

// TestAPIAuth: every back-office call needs an operator credential with the
// right role; health is the one anonymous endpoint.
func TestAPIAuth(t *testing.T) {
	var viewerKey string
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		viewerKey = ferrytest.AddOperator(t, cfg, "dashboard", credentials.RoleViewer)
	})
	f.Publish(t, "fw.bin")
	ctx := context.Background()
	anonymous := fleetv1connect.NewFleetServiceClient(f.HTTPClient(t), f.APIURL())
	withKey := func(key string) fleetv1connect.FleetServiceClient {
		return fleetv1connect.NewFleetServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(key))
	}
	otherKey, _ := credentials.NewAPIKey()
	get := func(c fleetv1connect.FleetServiceClient) error {
		_, err := c.GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
		return err
	}
	set := func(c fleetv1connect.FleetServiceClient) error {
		_, err := c.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
			DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: bundle("fw.bin")},
		}))
		return err
	}
	tests := []struct {
		name string
		call func() error
		code connect.Code
	}{
		{"no credential", func() error { return get(anonymous) }, connect.CodeUnauthenticated},
		{"no credential, gRPC", func() error {
			return get(fleetv1connect.NewFleetServiceClient(f.HTTPClient(t), f.APIURL(), connect.WithGRPC()))
		}, connect.CodeUnauthenticated},
		{"unknown key", func() error { return get(withKey(otherKey)) }, connect.CodeUnauthenticated},
		{"malformed key", func() error { return get(withKey("password")) }, connect.CodeUnauthenticated},
		{"viewer reads", func() error { return get(withKey(viewerKey)) }, 0},
		{"viewer sets desired state", func() error { return set(withKey(viewerKey)) }, connect.CodePermissionDenied},
		{"admin sets desired state", func() error { return set(f.Fleet(t)) }, 0},
	}
	for _, tt := range tests {
		err := tt.call()
		if got := connect.CodeOf(err); err != nil && got != tt.code || err == nil && tt.code != 0 {
			t.Errorf("%s: %v, want code %v", tt.name, err, tt.code)
		}
	}

	// Metrics need a credential too: an API key or an operator
	// certificate, as everywhere else in the back office.
	opCert, err := tls.LoadX509KeyPair(f.Dev.OperatorCert, f.Dev.OperatorKey)
	if err != nil {
		t.Fatal(err)
	}
	devCert, devKey := f.Dev.DeviceCert("dev-1")
	deviceCert, err := tls.LoadX509KeyPair(devCert, devKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		key  string
		cert *tls.Certificate
		want int
	}{
		{"no credential", "", nil, http.StatusUnauthorized},
		{"viewer key", viewerKey, nil, http.StatusOK},
		{"unknown key", otherKey, nil, http.StatusUnauthorized},
		{"operator certificate", "", &opCert, http.StatusOK},
		{"device certificate", "", &deviceCert, http.StatusUnauthorized},
	} {
		client := &http.Client{Transport: &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"}}}
		if tt.cert != nil {
			client.Transport.(*http2.Transport).TLSClientConfig.Certificates = []tls.Certificate{*tt.cert}
		}
		req, _ := http.NewRequest(http.MethodGet, f.APIURL()+"/metrics", nil)
		if tt.key != "" {
			req.Header.Set("Authorization", "Bearer "+tt.key)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET /metrics, %s: %s, want %d", tt.name, resp.Status, tt.want)
		}
	}

	// gRPC health (anonymous) and reflection (operators only), with grpc-go.
	conn, err := grpc.NewClient(f.APIAddr(), grpc.WithTransportCredentials(grpccreds.NewTLS(
		&tls.Config{RootCAs: f.CAPool(t), ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || health.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: %v, %v", health, err)
	}
	listServices := func(ctx context.Context) ([]string, error) {
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			return nil, err
		}
		// A refused stream may end before the request is sent: Send then
		// returns io.EOF and Recv carries the status.
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
		}); err != nil && err != io.EOF {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		return names, nil
	}
	if _, err := listServices(ctx); status.Code(err) != codes.Unauthenticated {
		t.Errorf("reflection without a credential: %v, want Unauthenticated", err)
	}
	names, err := listServices(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+viewerKey))
	if err != nil || !strings.Contains(strings.Join(names, " "), "ferry.fleet.v1.FleetService") {
		t.Errorf("reflection: %q, %v", names, err)
	}
}

// TestBadInput: bad requests get the right code and change nothing.
func TestBadInput(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	f.Publish(t, "fw-1.bin", "fw.bin")
	ctx := context.Background()
	fleet := f.Fleet(t)
	if _, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{
		DeviceId: "dev-1", Document: &devicev1.DesiredDocument{Bundle: bundle("fw-1.bin")},
	})); err != nil {
		t.Fatal(err)
	}
	stale := uint64(0)
	set := func(id string, doc *devicev1.DesiredDocument, expect *uint64) error {
		_, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{DeviceId: id, Document: doc, ExpectedVersion: expect}))
		return err
	}
	withBundle := func(b *devicev1.Bundle) *devicev1.DesiredDocument { return &devicev1.DesiredDocument{Bundle: b} }
	tests := []struct {
		name string
		call func() error
		code connect.Code
	}{
		{"path traversal", func() error {
			return set("dev-1", withBundle(&devicev1.Bundle{TargetPath: "../../etc/shadow", Length: 1, Sha256: sum}), nil)
		}, connect.CodeInvalidArgument},
		{"bad hash", func() error {
			return set("dev-1", withBundle(&devicev1.Bundle{TargetPath: "fw.bin", Length: 1, Sha256: "xyz"}), nil)
		}, connect.CodeInvalidArgument},
		{"no document", func() error { return set("dev-1", nil, nil) }, connect.CodeInvalidArgument},
		{"malformed device id", func() error { return set("dev 1", withBundle(bundle("fw.bin")), nil) }, connect.CodeInvalidArgument},
		{"unknown device", func() error { return set("dev-404", withBundle(bundle("fw.bin")), nil) }, connect.CodeNotFound},
		{"unpublished bundle", func() error { return set("dev-1", withBundle(bundle("gw/9.9.9/fw.bin")), nil) }, connect.CodeFailedPrecondition},
		{"unpublished bundle, selector", func() error {
			_, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{Selector: "group=dev", Document: withBundle(bundle("gw/9.9.9/fw.bin"))}))
			return err
		}, connect.CodeFailedPrecondition},
		{"bundle with another digest", func() error {
			return set("dev-1", withBundle(&devicev1.Bundle{TargetPath: "fw.bin", Length: 4, Sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}), nil)
		}, connect.CodeFailedPrecondition},
		{"stale expected version", func() error { return set("dev-1", withBundle(bundle("fw.bin")), &stale) }, connect.CodeAborted},
		{"bad page token", func() error {
			_, err := fleet.ListDevices(ctx, connect.NewRequest(&fleetv1.ListDevicesRequest{PageToken: "!!"}))
			return err
		}, connect.CodeInvalidArgument},
		{"bad selector", func() error {
			_, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{Selector: "ring in (", Document: withBundle(bundle("fw.bin"))}))
			return err
		}, connect.CodeInvalidArgument},
		{"selector and device", func() error {
			_, err := fleet.SetDesiredState(ctx, connect.NewRequest(&fleetv1.SetDesiredStateRequest{DeviceId: "dev-1", Selector: "a=b", Document: withBundle(bundle("fw.bin"))}))
			return err
		}, connect.CodeInvalidArgument},
		{"bad list selector", func() error {
			_, err := fleet.ListDevices(ctx, connect.NewRequest(&fleetv1.ListDevicesRequest{LabelSelector: "a=b=c"}))
			return err
		}, connect.CodeInvalidArgument},
		{"negative silence", func() error {
			_, err := fleet.GetFleetSummary(ctx, connect.NewRequest(&fleetv1.GetFleetSummaryRequest{SilentAfter: durationpb.New(-time.Second)}))
			return err
		}, connect.CodeInvalidArgument},
		{"no attestation", func() error {
			_, err := fleet.GetAttestation(ctx, connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: "dev-1", JobId: "job-none"}))
			return err
		}, connect.CodeNotFound},
		{"events of an unknown device", func() error {
			_, err := fleet.ListDeviceEvents(ctx, connect.NewRequest(&fleetv1.ListDeviceEventsRequest{DeviceId: "dev-404"}))
			return err
		}, connect.CodeNotFound},
	}
	for _, tt := range tests {
		if got := connect.CodeOf(tt.call()); got != tt.code {
			t.Errorf("%s: code %v, want %v", tt.name, got, tt.code)
		}
	}
	// The messages say which device or bundle is meant.
	messages := []struct {
		name string
		err  error
		want string
	}{
		{"unknown device", set("gw-9", withBundle(bundle("fw.bin")), nil), `not_found: device "gw-9" not found`},
		{"events of an unknown device", func() error {
			_, err := fleet.ListDeviceEvents(ctx, connect.NewRequest(&fleetv1.ListDeviceEventsRequest{DeviceId: "gw-9"}))
			return err
		}(), `device "gw-9" not found`},
		{"unpublished bundle", set("dev-1", withBundle(bundle("gw/9.9.9/fw.bin")), nil), `no bundle "gw/9.9.9/fw.bin" is published in the repository`},
	}
	for _, m := range messages {
		if m.err == nil || !strings.Contains(m.err.Error(), m.want) {
			t.Errorf("%s: %v, want a message with %q", m.name, m.err, m.want)
		}
	}
	d, err := fleet.GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"}))
	if err != nil {
		t.Fatal(err)
	}
	if v := d.Msg.GetDevice().GetDesired(); v.GetVersion() != 1 || v.GetDocument().GetBundle().GetTargetPath() != "fw-1.bin" {
		t.Errorf("refused requests changed the device: %v", v)
	}
}

// TestListDevices pages through the development devices.
func TestListDevices(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Redis, nil)
	var ids []string
	token := ""
	for {
		resp, err := f.Fleet(t).ListDevices(context.Background(), connect.NewRequest(&fleetv1.ListDevicesRequest{PageSize: 2, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range resp.Msg.GetDevices() {
			ids = append(ids, d.GetId())
		}
		if token = resp.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	if got := strings.Join(ids, ","); got != "dev-1,dev-2,dev-3" {
		t.Errorf("listed %s", got)
	}
}

// TestStreamProtocol: protocol violations end the stream with a clear code.
func TestStreamProtocol(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) {
		cfg.Device.MessagesPerSecond, cfg.Device.MessageBurst = 1, 3
		cfg.Device.MaxMessageBytes = 4 << 10
	})
	open := func(t *testing.T, first *devicev1.SyncRequest) *ferrytest.Device {
		conn := f.DeviceConn(t, f.DeviceTLS(t, "dev-1"))
		stream, err := devicev1.NewDeviceServiceClient(conn).Sync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		d := &ferrytest.Device{Stream: stream}
		if err := stream.Send(first); err != nil {
			t.Fatal(err)
		}
		return d
	}
	hello := &devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{}}}
	ack := &devicev1.SyncRequest{Message: &devicev1.SyncRequest_Ack{Ack: &devicev1.Ack{}}}
	tests := []struct {
		name  string
		first *devicev1.SyncRequest
		then  []*devicev1.SyncRequest
		code  codes.Code
	}{
		{"report before hello", &devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{}}}, nil, codes.FailedPrecondition},
		{"second hello", hello, []*devicev1.SyncRequest{hello}, codes.FailedPrecondition},
		{"empty message", hello, []*devicev1.SyncRequest{{}}, codes.InvalidArgument},
		{"over the rate limit", hello, []*devicev1.SyncRequest{ack, ack, ack, ack, ack, ack}, codes.ResourceExhausted},
		{"oversized message", hello, []*devicev1.SyncRequest{{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{
			Message: strings.Repeat("x", 8<<10)}}}}, codes.ResourceExhausted},
		{"bad reported state", &devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{
			Reported: &devicev1.ReportedState{Bundle: &devicev1.Bundle{TargetPath: "/abs"}}}}}, nil, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := open(t, tt.first)
			for _, m := range tt.then {
				if err := d.Stream.Send(m); err != nil {
					break // the server may already have ended the stream
				}
			}
			var err error
			for err == nil {
				_, err = d.Stream.Recv()
			}
			if got := status.Code(err); got != tt.code {
				t.Errorf("stream ended with %v (%v), want %v", got, err, tt.code)
			}
		})
	}
}

// TestNewerStreamReplacesOlder: a device has one stream; the newer wins.
func TestNewerStreamReplacesOlder(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	first := f.OpenDevice(t, "dev-3", &devicev1.Hello{})
	// A round trip makes sure the first stream is registered.
	first.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Report{Report: &devicev1.Report{}}})
	if first.Recv().GetRejected() == nil {
		t.Fatal("no answer to a report")
	}
	f.OpenDevice(t, "dev-3", &devicev1.Hello{})
	_, err := first.RecvErr()
	if status.Code(err) != codes.Aborted {
		t.Errorf("older stream ended with %v, want Aborted", err)
	}
}

// TestShutdownWithOpenStreams: stopping ferryd tells devices to reconnect
// (Unavailable), turns health NOT_SERVING, and ends within the timeout.
func TestShutdownWithOpenStreams(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	var devs []*ferrytest.Device
	for _, id := range []string{"dev-1", "dev-2", "dev-3"} {
		d := f.OpenDevice(t, id, &devicev1.Hello{})
		devs = append(devs, d)
	}
	// Hold one back-office stream open as well, on an idle connection.
	if _, err := f.Fleet(t).GetDevice(context.Background(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"})); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("shutdown took %v with open streams", took)
	}
	for i, d := range devs {
		_, err := d.RecvErr()
		if status.Code(err) != codes.Unavailable {
			t.Errorf("device %d: stream ended with %v, want Unavailable", i+1, err)
		}
	}
	if _, err := f.Fleet(t).GetDevice(context.Background(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "dev-1"})); err == nil || errors.Is(err, context.Canceled) {
		t.Errorf("API still answers after shutdown: %v", err)
	}
}
