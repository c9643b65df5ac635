package server

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"

	"connectrpc.com/connect"

	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/replica"
)

// fleetService is the Connect handler of FleetService: thin, it converts
// and calls the replica. The RPCs it does not override answer Unimplemented.
type fleetService struct {
	fleetv1connect.UnimplementedFleetServiceHandler
	replica *replica.Service
	log     *slog.Logger
	creds   *credentialsState // AddDevice, RevokeDevice (fleet_devices.go)
}

var _ fleetv1connect.FleetServiceHandler = (*fleetService)(nil)

// Page sizes of list calls.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func (f *fleetService) GetDevice(ctx context.Context, req *connect.Request[fleetv1.GetDeviceRequest]) (*connect.Response[fleetv1.GetDeviceResponse], error) {
	d, err := f.replica.GetDevice(ctx, req.Msg.GetDeviceId())
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	return connect.NewResponse(&fleetv1.GetDeviceResponse{Device: deviceToProto(d)}), nil
}

func (f *fleetService) ListDevices(ctx context.Context, req *connect.Request[fleetv1.ListDevicesRequest]) (*connect.Response[fleetv1.ListDevicesResponse], error) {
	size := int(req.Msg.GetPageSize())
	switch {
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	after, err := base64.RawURLEncoding.DecodeString(req.Msg.GetPageToken())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("page_token: not a token this server issued"))
	}
	devs, err := f.replica.ListDevices(ctx, string(after), size)
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	resp := &fleetv1.ListDevicesResponse{Devices: make([]*fleetv1.Device, len(devs))}
	for i, d := range devs {
		resp.Devices[i] = deviceToProto(d)
	}
	if len(devs) == size {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(devs[len(devs)-1].ID))
	}
	return connect.NewResponse(resp), nil
}

func (f *fleetService) SetDesiredState(ctx context.Context, req *connect.Request[fleetv1.SetDesiredStateRequest]) (*connect.Response[fleetv1.SetDesiredStateResponse], error) {
	op := operatorFromContext(ctx)
	d, err := f.replica.SetDesired(ctx, req.Msg.GetDeviceId(), documentFromProto(req.Msg.GetDocument()),
		"operator:"+op.Name, req.Msg.ExpectedVersion)
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	return connect.NewResponse(&fleetv1.SetDesiredStateResponse{Device: deviceToProto(d)}), nil
}
