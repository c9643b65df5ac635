package server

import (
	"context"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

// AddDevice adds a device to the fleet (or finds it) and returns a new
// one-time enrollment token for it. Calling it again for the same device
// gives a new token and voids the earlier unused ones; a device that has
// enrolled gets one only with reenroll set.
func (f *fleetService) AddDevice(ctx context.Context, req *connect.Request[fleetv1.AddDeviceRequest]) (*connect.Response[fleetv1.AddDeviceResponse], error) {
	id := req.Msg.GetDeviceId()
	labels := req.Msg.GetLabels()
	// Refuse a revoked device before anything is written.
	if err := f.creds.broker.CheckNotRevoked(ctx, id); err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	d, err := f.replica.Register(ctx, id, labels)
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	token, exp, err := f.creds.broker.CreateEnrollment(ctx, id, labels, req.Msg.GetReenroll())
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	f.log.InfoContext(ctx, "device added", "device", id, "reenroll", req.Msg.GetReenroll(), "by", operatorFromContext(ctx).Name)
	return connect.NewResponse(&fleetv1.AddDeviceResponse{
		Device: deviceToProto(d), EnrollmentToken: token, EnrollmentExpireTime: timestamppb.New(exp),
	}), nil
}

// RevokeDevice revokes a device for good: renewal and enrollment are
// refused, new handshakes are refused, and its open stream is closed.
func (f *fleetService) RevokeDevice(ctx context.Context, req *connect.Request[fleetv1.RevokeDeviceRequest]) (*connect.Response[fleetv1.RevokeDeviceResponse], error) {
	id := req.Msg.GetDeviceId()
	if _, err := f.replica.GetDevice(ctx, id); err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	if err := f.creds.revoke(ctx, id, req.Msg.GetReason(), "operator:"+operatorFromContext(ctx).Name); err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	return connect.NewResponse(&fleetv1.RevokeDeviceResponse{}), nil
}
