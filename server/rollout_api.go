package server

import (
	"context"
	"fmt"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/rollout"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/tuf"
)

// rolloutService is the Connect handler of RolloutService.
type rolloutService struct {
	rollouts *rollout.Service
	replica  *replica.Service // devices a rollout matches (preconditions.go)
	repo     *tuf.Repository  // bundles a rollout gives (preconditions.go)
	log      *slog.Logger
}

var _ fleetv1connect.RolloutServiceHandler = (*rolloutService)(nil)

func (s *rolloutService) CreateRollout(ctx context.Context, req *connect.Request[fleetv1.CreateRolloutRequest]) (*connect.Response[fleetv1.CreateRolloutResponse], error) {
	spec, err := rolloutSpecFromProto(req.Msg)
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	if err := rollout.Validate(spec); err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	if err := checkPublished(ctx, s.repo, "bundle", spec.Bundle); err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	// The signed hardware list decides which devices are left out.
	if pub, err := s.repo.FindBundle(ctx, spec.Bundle.TargetPath); err != nil {
		return nil, connectError(ctx, s.log, err)
	} else {
		spec.Hardware = slices.Clone(pub.Info.Hardware)
	}
	if err := checkPublished(ctx, s.repo, "rollback_bundle", spec.RollbackBundle); err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	if err := checkMatchesDevices(ctx, s.replica, spec); err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	r, err := s.rollouts.Create(ctx, spec, "operator:"+operatorFromContext(ctx).Name)
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	return connect.NewResponse(&fleetv1.CreateRolloutResponse{Rollout: rolloutToProto(r)}), nil
}

func (s *rolloutService) GetRollout(ctx context.Context, req *connect.Request[fleetv1.GetRolloutRequest]) (*connect.Response[fleetv1.GetRolloutResponse], error) {
	r, err := s.rollouts.Get(ctx, req.Msg.GetRolloutId())
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	return connect.NewResponse(&fleetv1.GetRolloutResponse{Rollout: rolloutToProto(r)}), nil
}

func (s *rolloutService) ListRollouts(ctx context.Context, req *connect.Request[fleetv1.ListRolloutsRequest]) (*connect.Response[fleetv1.ListRolloutsResponse], error) {
	size := pageSize(req.Msg.GetPageSize())
	before, err := afterToken(req.Msg.GetPageToken())
	if err != nil {
		return nil, err
	}
	page, err := s.rollouts.List(ctx, before, size+1)
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	resp := &fleetv1.ListRolloutsResponse{}
	if len(page) > size {
		page = page[:size]
		resp.NextPageToken = pageToken(page[size-1].ID)
	}
	for _, r := range page {
		resp.Rollouts = append(resp.Rollouts, rolloutToProto(r))
	}
	return connect.NewResponse(resp), nil
}

func (s *rolloutService) PauseRollout(ctx context.Context, req *connect.Request[fleetv1.PauseRolloutRequest]) (*connect.Response[fleetv1.PauseRolloutResponse], error) {
	r, err := s.rollouts.Pause(ctx, req.Msg.GetRolloutId(), "operator:"+operatorFromContext(ctx).Name)
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	return connect.NewResponse(&fleetv1.PauseRolloutResponse{Rollout: rolloutToProto(r)}), nil
}

func (s *rolloutService) ResumeRollout(ctx context.Context, req *connect.Request[fleetv1.ResumeRolloutRequest]) (*connect.Response[fleetv1.ResumeRolloutResponse], error) {
	r, err := s.rollouts.Resume(ctx, req.Msg.GetRolloutId(), "operator:"+operatorFromContext(ctx).Name)
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	return connect.NewResponse(&fleetv1.ResumeRolloutResponse{Rollout: rolloutToProto(r)}), nil
}

func (s *rolloutService) CancelRollout(ctx context.Context, req *connect.Request[fleetv1.CancelRolloutRequest]) (*connect.Response[fleetv1.CancelRolloutResponse], error) {
	r, err := s.rollouts.Cancel(ctx, req.Msg.GetRolloutId(), "operator:"+operatorFromContext(ctx).Name, req.Msg.GetRollback())
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	return connect.NewResponse(&fleetv1.CancelRolloutResponse{Rollout: rolloutToProto(r)}), nil
}

func (s *rolloutService) WatchRollout(ctx context.Context, req *connect.Request[fleetv1.WatchRolloutRequest], stream *connect.ServerStream[fleetv1.WatchRolloutResponse]) error {
	err := s.rollouts.Watch(ctx, req.Msg.GetRolloutId(), func(r store.Rollout) error {
		return stream.Send(&fleetv1.WatchRolloutResponse{Rollout: rolloutToProto(r)})
	})
	switch {
	case err == nil: // the rollout ended
		return nil
	case ctx.Err() != nil:
		// The caller left or its deadline passed: a clean end would tell
		// it that the rollout is over.
		return connectError(ctx, s.log, ctx.Err())
	}
	return connectError(ctx, s.log, err)
}

func (s *rolloutService) ListRolloutExecutions(ctx context.Context, req *connect.Request[fleetv1.ListRolloutExecutionsRequest]) (*connect.Response[fleetv1.ListRolloutExecutionsResponse], error) {
	size := pageSize(req.Msg.GetPageSize())
	after, err := afterToken(req.Msg.GetPageToken())
	if err != nil {
		return nil, err
	}
	page, err := s.rollouts.Executions(ctx, req.Msg.GetRolloutId(), req.Msg.GetStatus(), after, size+1)
	if err != nil {
		return nil, connectError(ctx, s.log, err)
	}
	resp := &fleetv1.ListRolloutExecutionsResponse{}
	if len(page) > size {
		page = page[:size]
		resp.NextPageToken = pageToken(page[size-1].DeviceID)
	}
	for _, e := range page {
		resp.Executions = append(resp.Executions, &fleetv1.RolloutExecution{
			DeviceId: e.DeviceID, Wave: uint32(e.Wave), Status: e.Status, JobId: e.JobID, DesiredVersion: e.DesiredVersion,
			Attempts: e.Attempts, DispatchTime: timestamp(e.DispatchedAt), EndTime: timestamp(e.EndedAt),
			RolledBack: e.RolledBack, Message: e.Message,
		})
	}
	return connect.NewResponse(resp), nil
}

// rolloutSpecFromProto reads what a CreateRollout asks. Fields the domain
// checks (sizes, ranges) are left to rollout.Validate.
func rolloutSpecFromProto(m *fleetv1.CreateRolloutRequest) (store.RolloutSpec, error) {
	sel, err := replica.ParseSelector(m.GetSelector())
	if err != nil {
		return store.RolloutSpec{}, err
	}
	if g := m.GetGroup(); g != "" {
		if strings.ContainsAny(g, "=,") || len(validation.IsValidLabelValue(g)) > 0 {
			return store.RolloutSpec{}, &replica.InvalidError{Field: "group", Reason: "is not a label value"}
		}
		if sel != nil && !sel.Matches(labels.Set{"group": g}) {
			if reqs, _ := sel.Requirements(); slices.ContainsFunc(reqs, func(r labels.Requirement) bool { return r.Key() == "group" }) {
				return store.RolloutSpec{}, &replica.InvalidError{Field: "group", Reason: "contradicts the selector's group term"}
			}
		}
		terms := "group=" + g
		if sel != nil {
			terms = sel.String() + "," + terms
		}
		if sel, err = replica.ParseSelector(terms); err != nil {
			return store.RolloutSpec{}, &replica.InvalidError{Field: "group", Reason: "is not a label value"}
		}
	}
	var selector string
	if sel != nil {
		selector = sel.String()
	}
	spec := store.RolloutSpec{
		Name:           m.GetName(),
		Bundle:         bundleFromProto(m.GetBundle()),
		Selector:       selector,
		Devices:        m.GetDeviceIds(),
		RollbackBundle: bundleFromProto(m.GetRollbackBundle()),
		Continuous:     m.GetContinuous(),
		Consent:        consentPolicyFromProto(m.GetConsent()),
	}
	if t := m.GetStartTime(); t != nil {
		if err := t.CheckValid(); err != nil {
			return spec, &replica.InvalidError{Field: "start_time", Reason: "is not a valid time"}
		}
		spec.StartAt = t.AsTime().UTC()
	}
	st := m.GetStrategy()
	for _, w := range st.GetWaves() {
		spec.Waves = append(spec.Waves, store.WaveSpec{Percent: w.GetPercent(), Count: w.GetCount()})
	}
	if r := st.GetRate(); r != nil {
		spec.Rate = &store.RateSpec{PerMinute: r.GetBasePerMinute(), Factor: r.GetFactor(), RaiseAfter: r.GetRaiseAfterSuccesses()}
	}
	spec.MaxInFlight, spec.Retries = st.GetMaxInFlight(), st.GetRetries()
	if spec.DeviceTimeout, err = durationFromProto("strategy.device_timeout", st.GetDeviceTimeout()); err != nil {
		return spec, err
	}
	if spec.Soak, err = durationFromProto("strategy.soak", st.GetSoak()); err != nil {
		return spec, err
	}
	for _, a := range m.GetAbortRules() {
		spec.Abort = append(spec.Abort, store.AbortRule{Status: string(statusFromProto(a.GetStatus())), Percent: a.GetPercent(), MinExecutions: a.GetMinExecutions()})
	}
	if w := m.GetMaintenanceWindow(); w != nil {
		win := store.Window{Start: w.GetStart(), Location: w.GetTimeZone()}
		if win.Duration, err = durationFromProto("maintenance_window.duration", w.GetDuration()); err != nil {
			return spec, err
		}
		for _, d := range w.GetDays() {
			day, ok := weekdays[strings.ToLower(d)]
			if !ok {
				return spec, &replica.InvalidError{Field: "maintenance_window.days", Reason: fmt.Sprintf("%q is not a day (mon to sun)", d)}
			}
			win.Days = append(win.Days, day)
		}
		spec.Window = &win
	}
	return spec, nil
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

func durationFromProto(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, &replica.InvalidError{Field: field, Reason: "is not a valid duration"}
	}
	return d.AsDuration(), nil
}

func durationToProto(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func rolloutToProto(r store.Rollout) *fleetv1.Rollout {
	spec := r.Spec
	out := &fleetv1.Rollout{
		Id:           r.ID,
		Name:         spec.Name,
		Bundle:       bundleToProto(spec.Bundle),
		Selector:     spec.SelectorString(),
		DeviceIds:    spec.Devices,
		State:        r.State,
		StateReason:  r.Reason,
		CreatedBy:    r.CreatedBy,
		CreateTime:   timestamp(r.CreatedAt),
		UpdateTime:   timestamp(r.UpdatedAt),
		BeginTime:    timestamp(r.StartedAt),
		EndTime:      timestamp(r.EndedAt),
		StartTime:    timestamp(spec.StartAt),
		Continuous:   spec.Continuous,
		Consent:      consentPolicyToProto(spec.Consent),
		CurrentWave:  uint32(r.Wave),
		CurrentRate:  r.Rate,
		Counts:       maps.Clone(r.Counts),
		Incompatible: r.Incompatible,
		Strategy: &fleetv1.RolloutStrategy{
			MaxInFlight:   spec.MaxInFlight,
			DeviceTimeout: durationToProto(spec.DeviceTimeout),
			Retries:       spec.Retries,
			Soak:          durationToProto(spec.Soak),
		},
	}
	if !spec.RollbackBundle.IsZero() {
		out.RollbackBundle = bundleToProto(spec.RollbackBundle)
	}
	for _, w := range spec.Waves {
		if w.Count > 0 {
			out.Strategy.Waves = append(out.Strategy.Waves, &fleetv1.Wave{Size: &fleetv1.Wave_Count{Count: w.Count}})
		} else {
			out.Strategy.Waves = append(out.Strategy.Waves, &fleetv1.Wave{Size: &fleetv1.Wave_Percent{Percent: w.Percent}})
		}
	}
	if rt := spec.Rate; rt != nil {
		out.Strategy.Rate = &fleetv1.ExponentialRate{BasePerMinute: rt.PerMinute, Factor: rt.Factor, RaiseAfterSuccesses: rt.RaiseAfter}
	}
	for _, a := range spec.Abort {
		out.AbortRules = append(out.AbortRules, &fleetv1.AbortRule{Status: statusToProto(a.Status), Percent: a.Percent, MinExecutions: a.MinExecutions})
	}
	if w := spec.Window; w != nil {
		mw := &fleetv1.MaintenanceWindow{Start: w.Start, Duration: durationToProto(w.Duration), TimeZone: w.Location}
		for _, d := range w.Days {
			mw.Days = append(mw.Days, strings.ToLower(d.String()[:3]))
		}
		out.MaintenanceWindow = mw
	}
	var target uint64
	for i, w := range r.Waves {
		target += w.Size
		out.Waves = append(out.Waves, &fleetv1.WaveProgress{
			Index: uint32(i), Size: w.Size, State: w.State, Counts: maps.Clone(w.Counts),
			BeginTime: timestamp(w.StartedAt), SoakEndTime: timestamp(w.SoakUntil), EndTime: timestamp(w.EndedAt),
			Incompatible: w.Incompatible,
		})
	}
	out.TargetCount = target
	return out
}
