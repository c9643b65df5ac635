package server

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"connectrpc.com/connect"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/tuf"
)

// fleetService is the Connect handler of FleetService: thin, it converts
// and calls the replica. The RPCs it does not override answer Unimplemented.
type fleetService struct {
	fleetv1connect.UnimplementedFleetServiceHandler
	replica *replica.Service
	repo    *tuf.Repository // bundles given to devices (preconditions.go)
	log     *slog.Logger
	creds   *credentialsState // AddDevice, RevokeDevice (fleet_devices.go)
	// deviceRoots and trustDomain verify stored reports (console_api.go).
	deviceRoots *x509.CertPool
	trustDomain string
}

var _ fleetv1connect.FleetServiceHandler = (*fleetService)(nil)

// Page sizes of list calls.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

// pageSize is the page a list call asked for, defaulted and capped.
func pageSize(asked uint32) int {
	switch {
	case asked == 0:
		return defaultPageSize
	case asked > maxPageSize:
		return maxPageSize
	}
	return int(asked)
}

// pageToken encodes the last name of a page of a list ordered by name.
func pageToken(last string) string { return base64.RawURLEncoding.EncodeToString([]byte(last)) }

// afterToken decodes a page token of a list ordered by name: the last name
// of the previous page.
func afterToken(tok string) (string, error) {
	after, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", connect.NewError(connect.CodeInvalidArgument, errors.New("page_token: not a token this server issued"))
	}
	return string(after), nil
}

func (f *fleetService) GetDevice(ctx context.Context, req *connect.Request[fleetv1.GetDeviceRequest]) (*connect.Response[fleetv1.GetDeviceResponse], error) {
	d, err := f.replica.GetDevice(ctx, req.Msg.GetDeviceId())
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	return connect.NewResponse(&fleetv1.GetDeviceResponse{Device: deviceToProto(d)}), nil
}

func (f *fleetService) ListDevices(ctx context.Context, req *connect.Request[fleetv1.ListDevicesRequest]) (*connect.Response[fleetv1.ListDevicesResponse], error) {
	size := pageSize(req.Msg.GetPageSize())
	after, err := afterToken(req.Msg.GetPageToken())
	if err != nil {
		return nil, err
	}
	sel, err := replica.ParseSelector(req.Msg.GetLabelSelector())
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	q := store.Query{Selector: sel, Bundle: req.Msg.GetBundle(), Status: string(statusFromProto(req.Msg.GetJobStatus()))}
	if q.Status == "" && req.Msg.GetJobStatus() != devicev1.JobStatus_JOB_STATUS_UNSPECIFIED {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("job_status: unknown status"))
	}
	if ts := req.Msg.GetSeenBefore(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("seen_before: %v", err))
		}
		q.SeenBefore = ts.AsTime()
	}
	devs, err := f.replica.ListQuery(ctx, q, after, size)
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	resp := &fleetv1.ListDevicesResponse{Devices: make([]*fleetv1.Device, len(devs))}
	for i, d := range devs {
		resp.Devices[i] = deviceToProto(d)
	}
	if len(devs) == size {
		resp.NextPageToken = pageToken(devs[len(devs)-1].ID)
	}
	return connect.NewResponse(resp), nil
}

func (f *fleetService) SetDesiredState(ctx context.Context, req *connect.Request[fleetv1.SetDesiredStateRequest]) (*connect.Response[fleetv1.SetDesiredStateResponse], error) {
	op := operatorFromContext(ctx)
	m := req.Msg
	doc := documentFromProto(m.GetDocument())
	if err := doc.Validate(); err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	if err := checkPublished(ctx, f.repo, "document.bundle", doc.Bundle); err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	if m.GetSelector() != "" {
		if m.GetDeviceId() != "" || m.ExpectedVersion != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument,
				errors.New("selector: give either device_id (with an optional expected_version) or a selector"))
		}
		sel, err := replica.ParseSelector(m.GetSelector())
		if err != nil {
			return nil, connectError(ctx, f.log, err)
		}
		n, err := f.replica.SetDesiredMatching(ctx, sel, doc, "operator:"+op.Name)
		if err != nil {
			return nil, connectError(ctx, f.log, err)
		}
		return connect.NewResponse(&fleetv1.SetDesiredStateResponse{DevicesUpdated: uint64(n)}), nil
	}
	d, err := f.replica.SetDesired(ctx, m.GetDeviceId(), doc, "operator:"+op.Name, m.ExpectedVersion)
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	return connect.NewResponse(&fleetv1.SetDesiredStateResponse{Device: deviceToProto(d), DevicesUpdated: 1}), nil
}

// defaultSilentAfter is how long a device may be quiet before the summary
// counts it as silent.
const defaultSilentAfter = time.Hour

func (f *fleetService) GetFleetSummary(ctx context.Context, req *connect.Request[fleetv1.GetFleetSummaryRequest]) (*connect.Response[fleetv1.GetFleetSummaryResponse], error) {
	after := defaultSilentAfter
	if d := req.Msg.GetSilentAfter(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("silent_after: want a positive duration"))
		}
		after = d.AsDuration()
	}
	sum, err := f.replica.Summary(ctx, time.Now().Add(-after))
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	resp := &fleetv1.GetFleetSummaryResponse{
		DevicesPerBundle: sum.PerBundle,
		DevicesPerStatus: make(map[string]uint64, len(sum.PerStatus)),
		TotalDevices:     sum.Total,
		SilentDevices:    sum.Silent,
	}
	for status, n := range sum.PerStatus {
		resp.DevicesPerStatus[status] = n
	}
	return connect.NewResponse(resp), nil
}

// WatchDevices streams every device that changes (its whole document), for
// as long as the caller stays. Changes that come faster than the caller
// reads are merged: it gets each changed device's latest state once.
func (f *fleetService) WatchDevices(ctx context.Context, req *connect.Request[fleetv1.WatchDevicesRequest], stream *connect.ServerStream[fleetv1.WatchDevicesResponse]) error {
	sel, err := replica.ParseSelector(req.Msg.GetLabelSelector())
	if err != nil {
		return connectError(ctx, f.log, err)
	}
	w, err := f.replica.Watch(ctx)
	if err != nil {
		return connectError(ctx, f.log, err)
	}
	defer w.Close()
	// Tell the caller the watch is in place before the first change.
	if err := stream.Conn().Send(nil); err != nil {
		return err
	}
	q := store.Query{Selector: sel}
	for {
		ids, err := w.Next(ctx)
		if err != nil {
			return nil // the caller left
		}
		slices.Sort(ids)
		for _, id := range ids {
			d, err := f.replica.GetDevice(ctx, id)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return connectError(ctx, f.log, err)
			}
			if !q.Match(d) {
				continue
			}
			if err := stream.Send(&fleetv1.WatchDevicesResponse{Device: deviceToProto(d)}); err != nil {
				return err
			}
		}
	}
}

func (f *fleetService) ListDeviceEvents(ctx context.Context, req *connect.Request[fleetv1.ListDeviceEventsRequest]) (*connect.Response[fleetv1.ListDeviceEventsResponse], error) {
	size := pageSize(req.Msg.GetPageSize())
	var before uint64
	if tok := req.Msg.GetPageToken(); tok != "" {
		raw, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(raw) != 8 {
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("page_token: not a token this server issued"))
		}
		before = binary.BigEndian.Uint64(raw)
	}
	evs, err := f.replica.ListEvents(ctx, req.Msg.GetDeviceId(), before, size)
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	resp := &fleetv1.ListDeviceEventsResponse{Events: make([]*fleetv1.DeviceEvent, len(evs))}
	for i, ev := range evs {
		resp.Events[i] = eventToProto(ev)
	}
	if len(evs) == size && evs[len(evs)-1].Seq > 1 {
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString(binary.BigEndian.AppendUint64(nil, evs[len(evs)-1].Seq))
	}
	return connect.NewResponse(resp), nil
}

func (f *fleetService) GetAttestation(ctx context.Context, req *connect.Request[fleetv1.GetAttestationRequest]) (*connect.Response[fleetv1.GetAttestationResponse], error) {
	a, err := f.replica.GetAttestation(ctx, req.Msg.GetDeviceId(), req.Msg.GetJobId())
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	return connect.NewResponse(attestationResponse(a, f.deviceRoots, f.trustDomain, req.Msg.GetDeviceId(), req.Msg.GetJobId())), nil
}
