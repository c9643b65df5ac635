package server

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/store"
	"google.golang.org/protobuf/types/known/durationpb"
)

// consentPolicyFromProto converts a consent policy; an invalid max
// deferral becomes a negative one, which validation refuses.
func consentPolicyFromProto(p *devicev1.ConsentPolicy) *store.ConsentPolicy {
	if p == nil {
		return nil
	}
	out := &store.ConsentPolicy{BeforeInstall: p.GetBeforeInstall(), BeforeReboot: p.GetBeforeReboot()}
	if d := p.GetMaxDeferral(); d != nil {
		if d.CheckValid() != nil {
			out.MaxDeferral = -1
		} else {
			out.MaxDeferral = d.AsDuration()
		}
	}
	return out
}

func consentPolicyToProto(p *store.ConsentPolicy) *devicev1.ConsentPolicy {
	if p == nil {
		return nil
	}
	out := &devicev1.ConsentPolicy{BeforeInstall: p.BeforeInstall, BeforeReboot: p.BeforeReboot}
	if p.MaxDeferral > 0 {
		out.MaxDeferral = durationpb.New(p.MaxDeferral)
	}
	return out
}

func consentFromProto(c *devicev1.Consent) *replica.Consent {
	if c == nil {
		return nil
	}
	out := &replica.Consent{
		Decision: replica.ConsentDecision(trimPrefix(c.GetDecision().String(), "CONSENT_DECISION_")),
		Actor:    c.GetActor(),
		Action:   c.GetAction(),
	}
	if c.GetDecision() == devicev1.ConsentDecision_CONSENT_DECISION_UNSPECIFIED {
		out.Decision = ""
	}
	if t := c.GetDecideTime(); t != nil {
		out.At = t.AsTime()
	}
	if t := c.GetDeferredUntil(); t != nil {
		out.DeferredUntil = t.AsTime()
	}
	if out.At.IsZero() {
		out.At = time.Now()
	}
	return out
}

// CopyConfig gives one device's reported configuration (or some of its
// keys) to the devices a selector matches, as desired configuration.
func (f *fleetService) CopyConfig(ctx context.Context, req *connect.Request[fleetv1.CopyConfigRequest]) (*connect.Response[fleetv1.CopyConfigResponse], error) {
	m := req.Msg
	sel, err := replica.ParseSelector(m.GetSelector())
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	if sel == nil || sel.Empty() {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("selector: is required (an empty selector would match the whole fleet)"))
	}
	cfg, n, err := f.replica.CopyConfig(ctx, m.GetFromDeviceId(), store.Query{Selector: sel}, m.GetKeys(), "operator:"+operatorFromContext(ctx).Name)
	if err != nil {
		return nil, connectError(ctx, f.log, err)
	}
	return connect.NewResponse(&fleetv1.CopyConfigResponse{DevicesUpdated: uint64(n), Config: cfg}), nil
}
