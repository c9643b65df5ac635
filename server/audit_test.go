package server_test

import (
	"context"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

// TestAuditRecordsCredentials checks that enrollments, renewals and
// revocations reach the audit trail with who, what, where and the result,
// and that secrets do not, on both backends.
func TestAuditRecordsCredentials(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			f := ferrytest.Start(t, backend, nil)
			ctx := context.Background()
			gw := enroll(t, f, "gw-1")
			if _, err := credentialsv1.NewCredentialServiceClient(f.DeviceConn(t, gw.tls)).RenewCertificate(ctx,
				&credentialsv1.RenewCertificateRequest{Csr: newCSR(t, gw.key)}); err != nil {
				t.Fatal(err)
			}
			if _, err := credentialClient(t, f, nil).Enroll(ctx, connect.NewRequest(&credentialsv1.EnrollRequest{
				Csr: newCSR(t, gw.key), EnrollmentToken: "ferry_enroll_not-a-token"})); err == nil {
				t.Fatal("a made-up token enrolled")
			}
			if _, err := f.Fleet(t).RevokeDevice(ctx, connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: "gw-1", Reason: "lost"})); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Fleet(t).GetDevice(ctx, connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: "gw-1"})); err != nil {
				t.Fatal(err)
			}

			c := fleetv1connect.NewAuditServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
			resp, err := c.ListAuditEvents(ctx, connect.NewRequest(&fleetv1.ListAuditEventsRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			type row struct{ actor, action, resource, result string }
			var got []row
			for _, e := range resp.Msg.GetEvents() {
				a := e.GetAction()
				got = append(got, row{e.GetActor(), a[strings.LastIndex(a, "/")+1:], e.GetResource(), e.GetResult()})
				if strings.Contains(e.GetArgsJson(), "ferry_enroll_") {
					t.Errorf("a token reached the trail: %s", e.GetArgsJson())
				}
				if e.GetPeer() == "" || e.GetHash() == "" {
					t.Errorf("entry without peer or hash: %v", e)
				}
				if a == "/ferry.fleet.v1.FleetService/GetDevice" || e.GetActor() == "anonymous" {
					t.Errorf("a read or an unauthenticated call was recorded: %v", e)
				}
			}
			want := []row{ // newest first
				{"operator:dev-admin", "RevokeDevice", "gw-1", "ok"},
				{"device:gw-1", "RenewCertificate", "gw-1", "ok"},
				{"device:gw-1", "Enroll", "", "ok"},
				{"operator:dev-admin", "AddDevice", "gw-1", "ok"},
			}
			if len(got) < len(want) {
				t.Fatalf("trail %v, want it to start with %v", got, want)
			}
			for i, w := range want {
				if got[i] != w {
					t.Errorf("entry %d is %v, want %v", i, got[i], w)
				}
			}
		})
	}
}
