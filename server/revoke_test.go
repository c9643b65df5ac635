package server_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferryhq/ferry/internal/ferrytest"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

// TestRevokedDeviceCannotReopenStream: a revoked device that keeps its
// connection open cannot open a new stream on it (the handshake check
// alone would not see it again): every call checks revocation.
func TestRevokedDeviceCannotReopenStream(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	ctx := context.Background()
	d := enroll(t, f, "gw-kept")
	conn := f.DeviceConn(t, d.tls)
	client := devicev1.NewDeviceServiceClient(conn)

	open := func() (devicev1.DeviceService_SyncClient, error) {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		t.Cleanup(cancel)
		s, err := client.Sync(sctx)
		if err != nil {
			return nil, err
		}
		// A stream the server already ended fails Send with io.EOF; its
		// status comes with Recv.
		s.Send(&devicev1.SyncRequest{Message: &devicev1.SyncRequest_Hello{Hello: &devicev1.Hello{AgentVersion: "test"}}})
		_, err = s.Recv()
		return s, err
	}
	if _, err := open(); err != nil {
		t.Fatalf("stream before revocation: %v", err)
	}
	if _, err := f.Fleet(t).RevokeDevice(ctx, connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: d.id, Reason: "stolen"})); err != nil {
		t.Fatal(err)
	}
	// Same TLS connection, new stream.
	s, err := open()
	if err == nil {
		t.Fatalf("revoked device opened a new Sync stream on its open connection and got a Session (%v)", s)
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("new stream refused with %v, want PermissionDenied", err)
	}
}
