package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/internal/ferrytest"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

// TestReaddedDeviceRefusesOldTokens adds a device twice, enrolls it, and
// checks on both stores that no earlier token enrolls it again, and that a
// new token for the enrolled device takes an explicit re-enrolment.
func TestReaddedDeviceRefusesOldTokens(t *testing.T) {
	for _, backend := range ferrytest.Backends {
		t.Run(string(backend), func(t *testing.T) {
			f := ferrytest.Start(t, backend, nil)
			ctx := context.Background()
			fleet := f.Fleet(t)
			add := func(reenroll bool) (string, error) {
				resp, err := fleet.AddDevice(ctx, connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: "gw-7", Reenroll: reenroll}))
				if err != nil {
					return "", err
				}
				return resp.Msg.GetEnrollmentToken(), nil
			}
			enrollWith := func(token string) error {
				key, err := credentials.NewKey()
				if err != nil {
					t.Fatal(err)
				}
				_, err = credentialClient(t, f, nil).Enroll(ctx, connect.NewRequest(&credentialsv1.EnrollRequest{
					Csr: newCSR(t, key), EnrollmentToken: token,
				}))
				return err
			}
			refused := func(what string, err error, code connect.Code, msg string) {
				t.Helper()
				var ce *connect.Error
				if !errors.As(err, &ce) || ce.Code() != code || !strings.Contains(ce.Message(), msg) {
					t.Errorf("%s: %v, want %v with %q", what, err, code, msg)
				}
			}

			first, err := add(false)
			if err != nil {
				t.Fatal(err)
			}
			second, err := add(false) // not enrolled yet: a new token, the first void
			if err != nil {
				t.Fatal(err)
			}
			refused("enroll with the replaced token", enrollWith(first), connect.CodeUnauthenticated, "replaced by a newer one")
			if err := enrollWith(second); err != nil {
				t.Fatalf("enroll with the newest token: %v", err)
			}
			_, err = add(false)
			refused("add the enrolled device again", err, connect.CodeFailedPrecondition, "--reenroll")
			third, err := add(true)
			if err != nil {
				t.Fatalf("re-enrolment: %v", err)
			}
			for _, old := range []string{first, second} {
				refused("enroll with an old token after re-enrolment", enrollWith(old), connect.CodeUnauthenticated, "ferryctl device add")
			}
			if err := enrollWith(third); err != nil {
				t.Errorf("enroll with the re-enrolment token: %v", err)
			}
		})
	}
}
