package transport

import (
	"context"
	"fmt"
	"net/http"

	"connectrpc.com/connect"

	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

// Registrar adds devices to the fleet with an operator API key and returns
// their one-time enrollment tokens; the simulator uses it.
type Registrar struct {
	client fleetv1connect.FleetServiceClient
	key    string
}

// NewRegistrar returns a Registrar on l's API port.
func NewRegistrar(l *Link, apiKey string) *Registrar {
	tr := &http.Transport{TLSClientConfig: l.tlsConfig(l.apiHost(), nil), ForceAttemptHTTP2: true}
	return &Registrar{client: fleetv1connect.NewFleetServiceClient(&http.Client{Transport: tr}, l.cfg.APIURL), key: apiKey}
}

// AddDevice registers id with labels and returns its enrollment token. It
// asks for a re-enrolment: simulated devices keep no key between runs, so a
// device of an earlier run enrolls again.
func (r *Registrar) AddDevice(ctx context.Context, id string, labels map[string]string) (string, error) {
	req := connect.NewRequest(&fleetv1.AddDeviceRequest{DeviceId: id, Labels: labels, Reenroll: true})
	req.Header().Set("Authorization", "Bearer "+r.key)
	resp, err := r.client.AddDevice(ctx, req)
	if err != nil {
		return "", fmt.Errorf("add device %s: %w", id, err)
	}
	return resp.Msg.GetEnrollmentToken(), nil
}

// FleetSummary returns the number of devices per reported bundle and per
// job status.
func (r *Registrar) FleetSummary(ctx context.Context) (bundles, statuses map[string]uint64, err error) {
	req := connect.NewRequest(&fleetv1.GetFleetSummaryRequest{})
	req.Header().Set("Authorization", "Bearer "+r.key)
	resp, err := r.client.GetFleetSummary(ctx, req)
	if err != nil {
		return nil, nil, fmt.Errorf("fleet summary: %w", err)
	}
	return resp.Msg.GetDevicesPerBundle(), resp.Msg.GetDevicesPerStatus(), nil
}
