package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/audit"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/store"
)

// auditService serves AuditService: the audit trail, for auditors.
type auditService struct {
	log     store.Audit // nil: the backend keeps no audit trail
	devices store.Devices
	signer  signature.Signer
	logger  *slog.Logger
}

var _ fleetv1connect.AuditServiceHandler = (*auditService)(nil)

var errNoAudit = connect.NewError(connect.CodeUnimplemented, errors.New("this store keeps no audit trail"))

func (a *auditService) ListAuditEvents(ctx context.Context, req *connect.Request[fleetv1.ListAuditEventsRequest]) (*connect.Response[fleetv1.ListAuditEventsResponse], error) {
	if a.log == nil {
		return nil, errNoAudit
	}
	m := req.Msg
	size := int(m.GetPageSize())
	switch {
	case size == 0:
		size = 100
	case size > 1000:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("page_size %d: at most 1000", size))
	}
	q := store.AuditQuery{Actor: m.GetActor(), Action: m.GetAction(), Resource: m.GetResource(), Result: m.GetResult()}
	if m.Since != nil {
		q.Since = m.GetSince().AsTime()
	}
	if m.Until != nil {
		q.Until = m.GetUntil().AsTime()
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("since must be before until"))
	}
	page, err := a.log.ListAudit(ctx, q, m.GetPageToken(), size)
	if err != nil {
		return nil, connectError(ctx, a.logger, err)
	}
	out := &fleetv1.ListAuditEventsResponse{NextPageToken: page.Next}
	for _, e := range page.Entries {
		out.Events = append(out.Events, auditEventToProto(e))
	}
	return connect.NewResponse(out), nil
}

func (a *auditService) ExportAudit(ctx context.Context, req *connect.Request[fleetv1.ExportAuditRequest]) (*connect.Response[fleetv1.ExportAuditResponse], error) {
	if a.log == nil || a.signer == nil {
		return nil, errNoAudit
	}
	now := time.Now()
	var since, until time.Time
	if req.Msg.Since != nil {
		since = req.Msg.GetSince().AsTime()
	}
	until = now
	if req.Msg.Until != nil {
		until = req.Msg.GetUntil().AsTime()
	}
	if !since.Before(until) {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("since must be before until"))
	}
	raw, err := audit.Export(ctx, audit.Sources{Audit: a.log, Devices: a.devices}, a.signer, since, until, now)
	if err != nil {
		return nil, connectError(ctx, a.logger, err)
	}
	return connect.NewResponse(&fleetv1.ExportAuditResponse{Bundle: raw}), nil
}

func auditEventToProto(e store.AuditEntry) *fleetv1.AuditEvent {
	return &fleetv1.AuditEvent{
		Chain: uint32(e.Chain), Seq: e.Seq, Time: timestamppb.New(e.Time), Actor: e.Actor, Role: e.Role,
		Action: e.Action, Resource: e.Resource, ArgsJson: string(e.Args), Peer: e.Peer, Result: e.Result,
		Error: e.Error, Prev: e.Prev, Hash: e.Hash,
	}
}
