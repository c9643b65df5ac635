package sim_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/agent/transport"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

// TestEnrollRenewAndReport enrolls one device with a token, lets its
// certificate come due for renewal (the agent's clock runs ahead), and
// checks that it renews over mTLS, reconnects with the new certificate and
// still carries out a desired state with a signed report.
func TestEnrollRenewAndReport(t *testing.T) {
	w := newWorld(t)
	reg := transport.NewRegistrar(w.link, w.f.OperatorToken(t))
	tests := []struct {
		name  string
		id    string
		ahead time.Duration // how far the agent's clock runs ahead
		renew bool
	}{
		{name: "fresh certificate is kept", id: "renew-0", ahead: 0, renew: false},
		{name: "certificate past two thirds of its life is renewed", id: "renew-1", ahead: 20 * time.Hour, renew: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			token, err := reg.AddDevice(ctx, tc.id, map[string]string{"fleet": tc.id})
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			creds, err := agent.LoadOrEnroll(ctx, dir, transport.Enroller{Link: w.link}, token)
			if err != nil {
				t.Fatal(err)
			}
			first := creds.Leaf().SerialNumber
			var renewed atomic.Int32
			var skew atomic.Int64
			skew.Store(int64(tc.ahead))
			a, err := agent.New(agent.Config{
				Link: w.link, Credentials: creds, DeviceID: tc.id, Store: agent.FileStore{Path: dir + "/state.json"},
				TrustedRoot: w.rel.RootJSON(), Installer: &agent.AB{Dir: dir}, DownloadDir: dir + "/dl",
				MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
				Now: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) },
				OnRenew: func(c *agent.Credentials) error {
					renewed.Add(1)
					skew.Store(0) // the new certificate is fresh
					return c.Save(dir+"/"+agent.KeyFile, dir+"/"+agent.CertFile)
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			for _, d := range w.setDesiredIDs(t, []string{tc.id}, tc.id, &devicev1.DesiredDocument{Config: map[string]string{"k": "v"}}) {
				if j := d.GetJob(); j.GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED {
					t.Fatalf("job %v", j)
				}
				w.verifyAttestation(t, d)
			}
			if got := renewed.Load() > 0; got != tc.renew {
				t.Errorf("renewed %v, want %v", got, tc.renew)
			}
			if changed := creds.Leaf().SerialNumber.Cmp(first) != 0; changed != tc.renew {
				t.Errorf("certificate changed %v, want %v", changed, tc.renew)
			}
			if tc.renew {
				if _, err := agent.LoadCredentials(dir+"/"+agent.KeyFile, dir+"/"+agent.CertFile); err != nil {
					t.Errorf("saved renewed credentials: %v", err)
				}
			}
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("Run: %v", err)
			}
		})
	}
}

// setDesiredIDs is setDesired for devices labeled fleet=label.
func (w *world) setDesiredIDs(t *testing.T, ids []string, label string, doc *devicev1.DesiredDocument) []*fleetv1.Device {
	t.Helper()
	if _, err := w.fleet.SetDesiredState(t.Context(), connect.NewRequest(&fleetv1.SetDesiredStateRequest{Selector: "fleet=" + label, Document: doc})); err != nil {
		t.Fatal(err)
	}
	return w.wait(t, ids)
}
