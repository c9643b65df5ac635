package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/credentials"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/replica"
)

// Rollout states, as RolloutService names them.
const (
	rolloutScheduled = "SCHEDULED"
	rolloutRunning   = "RUNNING"
	rolloutPaused    = "PAUSED"
	rolloutCompleted = "COMPLETED"
	rolloutAborted   = "ABORTED"
	rolloutCanceled  = "CANCELED"
)

// countOrder is the order in which execution counts are shown.
var countOrder = []string{"PENDING", "QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "ROLLED_BACK", "CANCELED"}

// abortStatuses are the job statuses an abort rule may count.
var abortStatuses = []string{"FAILED", "REJECTED", "TIMED_OUT", "ROLLED_BACK"}

// failedStatuses are the executions shown as "failed": they ended without
// the device running the bundle, and not because the rollout ended.
var failedStatuses = []string{"FAILED", "REJECTED", "TIMED_OUT", "ROLLED_BACK"}

// weekdays are the days a maintenance window takes, in order.
var weekdays = []string{"mon", "tue", "wed", "thu", "fri", "sat", "sun"}

func ended(state string) bool {
	return state == rolloutCompleted || state == rolloutAborted || state == rolloutCanceled
}

// rollouts returns a RolloutService client.
func (a *app) rollouts() (fleetv1connect.RolloutServiceClient, error) {
	return newClient(a, fleetv1connect.NewRolloutServiceClient)
}

// resolveBundle names a bundle of the repository by its TUF target path,
// with the length and SHA-256 the repository's targets metadata give it.
func resolveBundle(ctx context.Context, a *app, path string) (*devicev1.Bundle, error) {
	client, err := a.repository()
	if err != nil {
		return nil, err
	}
	resp, err := client.GetBundle(ctx, connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: path}))
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	b := resp.Msg.GetBundle()
	sum := b.GetHashes()["sha256"]
	if sum == "" {
		return nil, fmt.Errorf("bundle %s: the repository gives it no SHA-256", path)
	}
	return &devicev1.Bundle{TargetPath: b.GetTargetPath(), Length: b.GetLength(), Sha256: sum}, nil
}

func newRolloutCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Create, follow and steer staged rollouts",
		Long: `A rollout gives a bundle of the repository to a set of devices (a label
selector, a group, or devices named one by one), wave by wave or at a
growing rate, stops when an abort rule fires, and can give the devices
already moved a rollback bundle.

"rollout watch" (and "rollout create --watch") exits 0 when the rollout
COMPLETED, and 1 with the reason when it was ABORTED or CANCELED, when the
watch is interrupted (Ctrl-C: the rollout goes on) or the stream fails.`,
	}
	cmd.AddCommand(newRolloutCreateCmd(a), newRolloutListCmd(a), newRolloutShowCmd(a))
	cmd.AddCommand(newRolloutPauseCmd(a), newRolloutResumeCmd(a), newRolloutCancelCmd(a), newRolloutWatchCmd(a))
	cmd.AddCommand(newRolloutDevicesCmd(a))
	return cmd
}

// createOpts are rollout create's flags.
type createOpts struct {
	bundle, rollbackBundle string
	name                   string
	selector, group        string
	devices                []string
	waves                  string
	rate, rateFactor       float64
	rateRaiseAfter         uint64
	maxInFlight            uint64
	deviceTimeout, soak    time.Duration
	retries                uint32
	abort                  []string
	startAt                string
	window, windowTZ       string
	windowDays             []string
	continuous             bool
	watch                  bool
	// changed reports whether a flag was given.
	changed func(name string) bool
}

// request checks the flags and builds the request, all but the bundles,
// which need the repository: every mistake is found before any call.
func (o *createOpts) request(now time.Time) (*fleetv1.CreateRolloutRequest, error) {
	changed := o.changed
	if changed == nil {
		changed = func(string) bool { return false }
	}
	if o.bundle == "" {
		return nil, errors.New("--bundle is required: the TUF target path of a published bundle")
	}
	req := &fleetv1.CreateRolloutRequest{Name: o.name, Continuous: o.continuous}

	targets := 0
	for _, given := range []bool{o.selector != "", o.group != "", len(o.devices) > 0} {
		if given {
			targets++
		}
	}
	if targets != 1 {
		return nil, errors.New("give exactly one target: --selector k=v,..., --group G, or --devices id1,id2")
	}
	switch {
	case o.selector != "":
		if _, err := replica.ParseSelector(o.selector); err != nil {
			return nil, fmt.Errorf("--selector: %w", err)
		}
		req.Selector = o.selector
	case o.group != "":
		if _, err := replica.ParseSelector("group=" + o.group); err != nil || strings.Contains(o.group, ",") {
			return nil, fmt.Errorf("--group %q is not a label value", o.group)
		}
		req.Group = o.group
	default:
		for _, id := range o.devices {
			if !credentials.ValidDeviceID(id) {
				return nil, fmt.Errorf("--devices: %q is not a device id", id)
			}
		}
		if o.continuous {
			return nil, errors.New("--continuous needs --selector or --group: a list of devices does not grow")
		}
		req.DeviceIds = o.devices
	}

	st := &fleetv1.RolloutStrategy{MaxInFlight: o.maxInFlight, Retries: o.retries}
	if o.waves != "" {
		if changed("rate") {
			return nil, errors.New("give --waves or --rate, not both")
		}
		waves, err := parseWaves(o.waves)
		if err != nil {
			return nil, err
		}
		st.Waves = waves
	}
	if changed("rate") {
		if !(o.rate > 0) || math.IsInf(o.rate, 0) {
			return nil, fmt.Errorf("--rate %v: want devices per minute, above 0", o.rate)
		}
		if changed("rate-factor") && !(o.rateFactor >= 1) {
			return nil, fmt.Errorf("--rate-factor %v: want at least 1", o.rateFactor)
		}
		if o.rateFactor > 1 && o.rateRaiseAfter == 0 {
			return nil, errors.New("--rate-factor needs --rate-raise-after N: the pace grows after every N successes")
		}
		st.Rate = &fleetv1.ExponentialRate{BasePerMinute: o.rate, Factor: o.rateFactor, RaiseAfterSuccesses: o.rateRaiseAfter}
	} else if changed("rate-factor") || changed("rate-raise-after") {
		return nil, errors.New("--rate-factor and --rate-raise-after need --rate")
	}
	if o.deviceTimeout < 0 {
		return nil, fmt.Errorf("--device-timeout %v: want a positive duration", o.deviceTimeout)
	}
	if o.soak < 0 {
		return nil, fmt.Errorf("--soak %v: want a positive duration", o.soak)
	}
	if o.deviceTimeout > 0 {
		st.DeviceTimeout = durationpb.New(o.deviceTimeout)
	}
	if o.soak > 0 {
		st.Soak = durationpb.New(o.soak)
	}
	if len(st.Waves) > 0 || st.Rate != nil || st.MaxInFlight > 0 || st.Retries > 0 || st.DeviceTimeout != nil || st.Soak != nil {
		req.Strategy = st
	}

	for _, s := range o.abort {
		rule, err := parseAbortRule(s)
		if err != nil {
			return nil, err
		}
		req.AbortRules = append(req.AbortRules, rule)
	}
	if o.startAt != "" {
		t, err := parseStartAt(o.startAt, now)
		if err != nil {
			return nil, err
		}
		req.StartTime = timestamppb.New(t)
	}
	if o.window != "" {
		w, err := parseWindow(o.window, o.windowDays, o.windowTZ)
		if err != nil {
			return nil, err
		}
		req.MaintenanceWindow = w
	} else if len(o.windowDays) > 0 || o.windowTZ != "" {
		return nil, errors.New("--window-days and --window-tz need --window HH:MM/DURATION")
	}
	return req, nil
}

// parseWaves reads --waves: sizes separated by commas, each a number of
// devices ("5") or a percent of the target set ("25%").
func parseWaves(s string) ([]*fleetv1.Wave, error) {
	var waves []*fleetv1.Wave
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if p, ok := strings.CutSuffix(item, "%"); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
			if err != nil || !(v > 0 && v <= 100) {
				return nil, fmt.Errorf("--waves: %q: want a percent above 0 and at most 100", item)
			}
			waves = append(waves, &fleetv1.Wave{Size: &fleetv1.Wave_Percent{Percent: v}})
			continue
		}
		n, err := strconv.ParseUint(item, 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("--waves: %q: want a number of devices (5) or a percent (25%%)", item)
		}
		waves = append(waves, &fleetv1.Wave{Size: &fleetv1.Wave_Count{Count: n}})
	}
	return waves, nil
}

// parseAbortRule reads --abort STATUS:PERCENT[:MIN], for example
// "failed:10%:20": stop when at least 10% of at least 20 ended executions
// ended FAILED.
func parseAbortRule(s string) (*fleetv1.AbortRule, error) {
	parts := strings.Split(s, ":")
	if len(parts) < 2 || len(parts) > 3 {
		return nil, fmt.Errorf("--abort %q: want STATUS:PERCENT[:MIN], for example failed:10%%:20", s)
	}
	name := strings.ReplaceAll(strings.ToUpper(strings.TrimSpace(parts[0])), "-", "_")
	name = strings.TrimPrefix(name, "JOB_STATUS_")
	if !slices.Contains(abortStatuses, name) {
		return nil, fmt.Errorf("--abort %q: status %q: want one of %s", s, parts[0], strings.ToLower(strings.Join(abortStatuses, ", ")))
	}
	rule := &fleetv1.AbortRule{Status: devicev1.JobStatus(devicev1.JobStatus_value["JOB_STATUS_"+name]), MinExecutions: 1}
	p, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(parts[1]), "%"), 64)
	if err != nil || !(p > 0 && p <= 100) {
		return nil, fmt.Errorf("--abort %q: percent %q: want above 0 and at most 100", s, parts[1])
	}
	rule.Percent = p
	if len(parts) == 3 {
		n, err := strconv.ParseUint(strings.TrimSpace(parts[2]), 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("--abort %q: MIN %q: want a number of ended executions, at least 1", s, parts[2])
		}
		rule.MinExecutions = n
	}
	return rule, nil
}

// parseStartAt reads --start-at: an RFC 3339 time, or +DURATION from now.
func parseStartAt(s string, now time.Time) (time.Time, error) {
	if d, ok := strings.CutPrefix(s, "+"); ok {
		dur, err := time.ParseDuration(d)
		if err != nil || dur <= 0 {
			return time.Time{}, fmt.Errorf("--start-at %q: want a positive duration after '+', for example +2h", s)
		}
		return now.Add(dur), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--start-at %q: want an RFC 3339 time (2026-11-23T02:00:00+01:00) or a duration from now (+2h)", s)
	}
	if t.Before(now) {
		return time.Time{}, fmt.Errorf("--start-at %s is in the past", s)
	}
	return t, nil
}

// parseWindow reads --window HH:MM/DURATION with --window-days (mon,tue or
// mon-fri) and --window-tz (an IANA zone).
func parseWindow(spec string, days []string, tz string) (*fleetv1.MaintenanceWindow, error) {
	start, length, ok := strings.Cut(spec, "/")
	if !ok {
		return nil, fmt.Errorf("--window %q: want HH:MM/DURATION, for example 02:00/4h", spec)
	}
	h, m, ok := strings.Cut(start, ":")
	hour, err1 := strconv.Atoi(h)
	minute, err2 := strconv.Atoi(m)
	if !ok || len(h) < 1 || len(h) > 2 || len(m) != 2 || err1 != nil || err2 != nil || hour < 0 || hour > 23 || minute < 0 || minute > 59 {
		return nil, fmt.Errorf("--window %q: start %q is not HH:MM", spec, start)
	}
	d, err := time.ParseDuration(length)
	if err != nil || d <= 0 || d > 24*time.Hour {
		return nil, fmt.Errorf("--window %q: duration %q: want above 0 and at most 24h", spec, length)
	}
	w := &fleetv1.MaintenanceWindow{Start: fmt.Sprintf("%02d:%02d", hour, minute), Duration: durationpb.New(d)}
	seen := map[string]bool{}
	for _, item := range days {
		from, to, isRange := strings.Cut(item, "-")
		i, ok1 := weekday(from)
		j, ok2 := i, ok1
		if isRange {
			j, ok2 = weekday(to)
		}
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("--window-days %q: want days mon to sun, or a range like mon-fri", item)
		}
		for k := i; ; k = (k + 1) % 7 {
			if !seen[weekdays[k]] {
				seen[weekdays[k]] = true
				w.Days = append(w.Days, weekdays[k])
			}
			if k == j {
				break
			}
		}
	}
	if tz != "" {
		if tz == "Local" {
			return nil, errors.New(`--window-tz "Local": name the zone, for example Europe/Berlin (ferryd may run in another)`)
		}
		if _, err := time.LoadLocation(tz); err != nil {
			return nil, fmt.Errorf("--window-tz %q: %w", tz, err)
		}
		w.TimeZone = tz
	}
	return w, nil
}

// weekday returns the index in weekdays of a day name ("mon", "Monday").
func weekday(s string) (int, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) < 3 {
		return 0, false
	}
	i := slices.Index(weekdays, s[:3])
	if i < 0 || !strings.HasPrefix(time.Weekday((i+1)%7).String(), strings.ToUpper(s[:1])+s[1:]) {
		return 0, false
	}
	return i, true
}

func newRolloutCreateCmd(a *app) *cobra.Command {
	o := &createOpts{}
	cmd := &cobra.Command{
		Use:   "create --bundle PATH (--selector K=V,... | --group G | --devices ID,...)",
		Short: "Create a rollout of a published bundle",
		Long: `create gives the bundle at the TUF target path PATH (its length and
SHA-256 are read from the repository) to the target devices.

Strategy: --waves lists the waves' sizes, each a number of devices or a
percent of the target set (the last wave takes what is left); or --rate
gives the job to so many devices a minute, multiplied by --rate-factor
after every --rate-raise-after successes. Without either, one wave of
every device. A wave starts once the previous one is done and its
devices stayed healthy for --soak.

--abort STATUS:PERCENT[:MIN] (repeatable) stops the rollout when the
executions that ended with STATUS (failed, rejected, timed_out,
rolled_back) make up PERCENT of those that ended, once MIN (default 1)
ended; --rollback-bundle is then given to the devices already moved.

--start-at delays the start (RFC 3339, or +2h from now); --window limits
when devices are given the job: a daily window HH:MM/DURATION, on
--window-days (mon,tue or mon-fri; default every day) in --window-tz
(default UTC).`,
		Example: `  ferryctl rollout create --bundle gateway/2.0.0/fw.bin --selector model=gw2 \
    --waves 5,25%,100% --soak 10m --abort failed:10%:20 --abort timed_out:20% \
    --rollback-bundle gateway/1.9.0/fw.bin --window 02:00/4h --window-days mon-fri \
    --window-tz Europe/Berlin --name "gateway 2.0"
  ferryctl rollout create --bundle gateway/2.0.0/fw.bin --group dev --rate 10 \
    --rate-factor 2 --rate-raise-after 20 --max-in-flight 50 --watch`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.changed = cmd.Flags().Changed
			req, err := o.request(time.Now())
			if err != nil {
				return err
			}
			client, err := a.rollouts()
			if err != nil {
				return err
			}
			if req.Bundle, err = resolveBundle(cmd.Context(), a, o.bundle); err != nil {
				return fmt.Errorf("--bundle: %w", err)
			}
			if o.rollbackBundle != "" {
				if req.RollbackBundle, err = resolveBundle(cmd.Context(), a, o.rollbackBundle); err != nil {
					return fmt.Errorf("--rollback-bundle: %w", err)
				}
			}
			resp, err := client.CreateRollout(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if a.output == "json" {
				if o.watch {
					// One JSON object a line, as watch prints.
					if err := printJSONLine(cmd.OutOrStdout(), resp.Msg); err != nil {
						return err
					}
				} else if err := printJSON(cmd.OutOrStdout(), resp.Msg); err != nil {
					return err
				}
			} else if err := showRollout(cmd.OutOrStdout(), resp.Msg.GetRollout()); err != nil {
				return err
			}
			if !o.watch {
				return nil
			}
			if a.output != "json" {
				fmt.Fprintln(cmd.OutOrStdout())
			}
			return watchRollout(cmd, a, client, resp.Msg.GetRollout().GetId())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.bundle, "bundle", "", "TUF target path of the bundle to give (required)")
	f.StringVar(&o.name, "name", "", "name of the rollout")
	f.StringVar(&o.selector, "selector", "", "target: every device with these labels, key=value,key2=value2")
	f.StringVar(&o.group, "group", "", "target: every device labeled group=G")
	f.StringSliceVar(&o.devices, "devices", nil, "target: these devices, id1,id2")
	f.StringVar(&o.waves, "waves", "", "wave sizes, each a count or a percent: 5,25%,100%")
	f.Float64Var(&o.rate, "rate", 0, "instead of waves: devices per minute at first")
	f.Float64Var(&o.rateFactor, "rate-factor", 0, "multiply the rate by this after every --rate-raise-after successes")
	f.Uint64Var(&o.rateRaiseAfter, "rate-raise-after", 0, "successes between two raises of the rate")
	f.Uint64Var(&o.maxInFlight, "max-in-flight", 0, "most devices working on the job at once (0: no limit)")
	f.DurationVar(&o.deviceTimeout, "device-timeout", 0, "a device not done by then ends TIMED_OUT (0: no timeout)")
	f.Uint32Var(&o.retries, "retries", 0, "how many more times a device that FAILED or TIMED_OUT gets the job")
	f.DurationVar(&o.soak, "soak", 0, "how long a wave's devices must stay healthy before the next wave")
	f.StringArrayVar(&o.abort, "abort", nil, "abort rule STATUS:PERCENT[:MIN], e.g. failed:10%:20 (repeatable)")
	f.StringVar(&o.rollbackBundle, "rollback-bundle", "", "TUF target path of the bundle given to the devices already moved when the rollout aborts")
	f.StringVar(&o.startAt, "start-at", "", "start time: RFC 3339, or a duration from now like +2h")
	f.StringVar(&o.window, "window", "", "daily maintenance window HH:MM/DURATION, e.g. 02:00/4h")
	f.StringSliceVar(&o.windowDays, "window-days", nil, "days the window opens: mon,tue or mon-fri (default every day)")
	f.StringVar(&o.windowTZ, "window-tz", "", "IANA time zone of the window, e.g. Europe/Berlin (default UTC)")
	f.BoolVar(&o.continuous, "continuous", false, "keep running after the last wave: devices that match later get the bundle too")
	f.BoolVar(&o.watch, "watch", false, "follow the rollout once created, as rollout watch does")

	bundles := bundleCompletion(a)
	_ = cmd.RegisterFlagCompletionFunc("bundle", bundles)
	_ = cmd.RegisterFlagCompletionFunc("rollback-bundle", bundles)
	statuses := make([]string, len(abortStatuses))
	for i, s := range abortStatuses {
		statuses[i] = strings.ToLower(s) + ":"
	}
	_ = cmd.RegisterFlagCompletionFunc("abort", cobra.FixedCompletions(statuses, cobra.ShellCompDirectiveNoSpace|cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("window-days", cobra.FixedCompletions(weekdays, cobra.ShellCompDirectiveNoFileComp))
	for _, name := range []string{"name", "selector", "group", "devices", "waves", "rate", "rate-factor", "rate-raise-after",
		"max-in-flight", "device-timeout", "retries", "soak", "start-at", "window", "window-tz"} {
		_ = cmd.RegisterFlagCompletionFunc(name, cobra.NoFileCompletions)
	}
	return cmd
}

func newRolloutListCmd(a *app) *cobra.Command {
	var limit uint32
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List rollouts, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, err := a.rollouts()
			if err != nil {
				return err
			}
			resp, err := listRollouts(cmd.Context(), client, limit)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			if err := rolloutTable(cmd.OutOrStdout(), resp.GetRollouts()); err != nil {
				return err
			}
			if resp.GetNextPageToken() != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "(more rollouts: raise --limit, or --limit 0 for all)\n")
			}
			return nil
		},
	}
	cmd.Flags().Uint32Var(&limit, "limit", 50, "at most this many rollouts (0: all)")
	return cmd
}

// listRollouts follows the pages until limit rollouts (0: all). The
// answer's next_page_token is set when there are more.
func listRollouts(ctx context.Context, client fleetv1connect.RolloutServiceClient, limit uint32) (*fleetv1.ListRolloutsResponse, error) {
	rs, next, err := collect(maxPage, limit, func(size uint32, token string) ([]*fleetv1.Rollout, string, error) {
		page, err := client.ListRollouts(ctx, connect.NewRequest(&fleetv1.ListRolloutsRequest{PageSize: size, PageToken: token}))
		if err != nil {
			return nil, "", err
		}
		return page.Msg.GetRollouts(), page.Msg.GetNextPageToken(), nil
	})
	if err != nil {
		return nil, err
	}
	return &fleetv1.ListRolloutsResponse{Rollouts: rs, NextPageToken: next}, nil
}

func newRolloutShowCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:               "show ROLLOUT_ID",
		Short:             "Show a rollout: what it does, where it stands, and each wave",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: rolloutIDCompletion(a, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := a.rollouts()
			if err != nil {
				return err
			}
			resp, err := client.GetRollout(cmd.Context(), connect.NewRequest(&fleetv1.GetRolloutRequest{RolloutId: args[0]}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			return showRollout(cmd.OutOrStdout(), resp.Msg.GetRollout())
		},
	}
}

// newRolloutSteerCmd makes pause, resume and cancel: call, then print the
// rollout's new state.
func newRolloutSteerCmd(a *app, use, short string, states []string,
	call func(ctx context.Context, c fleetv1connect.RolloutServiceClient, id string) (proto.Message, *fleetv1.Rollout, error)) *cobra.Command {
	return &cobra.Command{
		Use:               use + " ROLLOUT_ID",
		Short:             short,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: rolloutIDCompletion(a, states),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := a.rollouts()
			if err != nil {
				return err
			}
			msg, r, err := call(cmd.Context(), client, args[0])
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), msg)
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "rollout %s: %s\n", r.GetId(), stateWithReason(r))
			return err
		},
	}
}

func newRolloutPauseCmd(a *app) *cobra.Command {
	return newRolloutSteerCmd(a, "pause", "Stop giving the job to more devices (devices at work finish)",
		[]string{rolloutScheduled, rolloutRunning},
		func(ctx context.Context, c fleetv1connect.RolloutServiceClient, id string) (proto.Message, *fleetv1.Rollout, error) {
			resp, err := c.PauseRollout(ctx, connect.NewRequest(&fleetv1.PauseRolloutRequest{RolloutId: id}))
			if err != nil {
				return nil, nil, err
			}
			return resp.Msg, resp.Msg.GetRollout(), nil
		})
}

func newRolloutResumeCmd(a *app) *cobra.Command {
	return newRolloutSteerCmd(a, "resume", "Continue a paused rollout", []string{rolloutPaused},
		func(ctx context.Context, c fleetv1connect.RolloutServiceClient, id string) (proto.Message, *fleetv1.Rollout, error) {
			resp, err := c.ResumeRollout(ctx, connect.NewRequest(&fleetv1.ResumeRolloutRequest{RolloutId: id}))
			if err != nil {
				return nil, nil, err
			}
			return resp.Msg, resp.Msg.GetRollout(), nil
		})
}

func newRolloutCancelCmd(a *app) *cobra.Command {
	var rollback bool
	cmd := newRolloutSteerCmd(a, "cancel", "End a rollout: devices not given the job yet are CANCELED",
		[]string{rolloutScheduled, rolloutRunning, rolloutPaused},
		func(ctx context.Context, c fleetv1connect.RolloutServiceClient, id string) (proto.Message, *fleetv1.Rollout, error) {
			resp, err := c.CancelRollout(ctx, connect.NewRequest(&fleetv1.CancelRolloutRequest{RolloutId: id, Rollback: rollback}))
			if err != nil {
				return nil, nil, err
			}
			return resp.Msg, resp.Msg.GetRollout(), nil
		})
	cmd.Flags().BoolVar(&rollback, "rollback", false, "give the rollback bundle to the devices already moved")
	return cmd
}

func newRolloutWatchCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "watch ROLLOUT_ID",
		Short: "Follow a rollout until it ends: exit 0 when COMPLETED, 1 when ABORTED or CANCELED",
		Long: `watch prints a line each time the rollout changes (with -o json, one JSON
object a line) until it ends. It exits 0 when the rollout COMPLETED, and 1
with the reason when it was ABORTED or CANCELED, when the watch is
interrupted (Ctrl-C; the rollout goes on) or the stream fails.`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: rolloutIDCompletion(a, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := a.rollouts()
			if err != nil {
				return err
			}
			return watchRollout(cmd, a, client, args[0])
		},
	}
}

// watchRollout prints a rollout's updates until it ends. The error tells
// how it ended: nil only when it COMPLETED.
func watchRollout(cmd *cobra.Command, a *app, client fleetv1connect.RolloutServiceClient, id string) error {
	ctx := cmd.Context()
	stream, err := client.WatchRollout(ctx, connect.NewRequest(&fleetv1.WatchRolloutRequest{RolloutId: id}))
	if err != nil {
		return err
	}
	defer stream.Close()
	w := cmd.OutOrStdout()
	var last *fleetv1.Rollout
	for stream.Receive() {
		msg := stream.Msg()
		last = msg.GetRollout()
		if a.output == "json" {
			err = printJSONLine(w, msg)
		} else {
			_, err = fmt.Fprintln(w, watchLine(last, time.Now()))
		}
		if err != nil {
			return err
		}
		// ferryd ends the stream once the rollout's work is done (its end
		// time); stop there too, whatever the server does next.
		if ended(last.GetState()) && last.GetEndTime() != nil {
			break
		}
	}
	if err := stream.Err(); err != nil {
		// ferryd holds the caller's deadline to the whole millisecond, so
		// its DeadlineExceeded may come just before ctx's own.
		_, deadline := ctx.Deadline()
		if ctx.Err() != nil || deadline && connect.CodeOf(err) == connect.CodeDeadlineExceeded {
			return fmt.Errorf("rollout %s: stopped watching (interrupted); the rollout goes on", id)
		}
		return fmt.Errorf("watch rollout %s: %w", id, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("rollout %s: stopped watching (interrupted); the rollout goes on", id)
	}
	switch last.GetState() {
	case rolloutCompleted:
		return nil
	case rolloutAborted, rolloutCanceled:
		return fmt.Errorf("rollout %s %s: %s", id, last.GetState(), orDash(last.GetStateReason()))
	}
	return fmt.Errorf("watch rollout %s: the stream ended while the rollout is %s", id, orDash(last.GetState()))
}

// printJSONLine writes a message as protobuf JSON on one line.
func printJSONLine(w io.Writer, m proto.Message) error {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Compact(&out, raw); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = out.WriteTo(w)
	return err
}

// watchLine is one update of rollout watch:
// "2026-11-22 21:40:05  RUNNING  wave 1/3 RUNNING 12/50 ok 1 failed 5 in flight".
func watchLine(r *fleetv1.Rollout, now time.Time) string {
	at := now
	if t := r.GetUpdateTime(); t != nil {
		at = t.AsTime()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s", at.Local().Format("2006-01-02 15:04:05"), r.GetState())
	waves := r.GetWaves()
	if len(waves) == 0 {
		if t := r.GetStartTime(); r.GetState() == rolloutScheduled && t != nil {
			fmt.Fprintf(&b, "  starts %s", t.AsTime().Local().Format("2006-01-02 15:04:05"))
		}
	} else {
		i := min(int(r.GetCurrentWave()), len(waves)-1)
		w := waves[i]
		c := w.GetCounts()
		fmt.Fprintf(&b, "  wave %d/%d %s %d/%d ok %d failed %d in flight", i+1, len(waves), w.GetState(),
			c["SUCCEEDED"], w.GetSize(), failed(c), inFlight(c))
		if w.GetState() == "SOAKING" && w.GetSoakEndTime() != nil {
			fmt.Fprintf(&b, " (soak until %s)", w.GetSoakEndTime().AsTime().Local().Format("15:04:05"))
		}
		if len(waves) > 1 || r.GetTargetCount() != w.GetSize() {
			fmt.Fprintf(&b, "; all %d/%d ok", r.GetCounts()["SUCCEEDED"], r.GetTargetCount())
		}
		if rate := r.GetCurrentRate(); rate > 0 {
			fmt.Fprintf(&b, "; %s/min", fmtFloat(rate))
		}
	}
	if reason := r.GetStateReason(); reason != "" && r.GetState() != rolloutRunning {
		fmt.Fprintf(&b, "  (%s)", reason)
	}
	return b.String()
}

func failed(c map[string]uint64) uint64 {
	var n uint64
	for _, s := range failedStatuses {
		n += c[s]
	}
	return n
}

func inFlight(c map[string]uint64) uint64 { return c["QUEUED"] + c["IN_PROGRESS"] }

func stateWithReason(r *fleetv1.Rollout) string {
	if reason := r.GetStateReason(); reason != "" {
		return r.GetState() + " (" + reason + ")"
	}
	return r.GetState()
}

// target describes a rollout's target set: its selector, or how many
// devices it names.
func target(r *fleetv1.Rollout) string {
	if s := r.GetSelector(); s != "" {
		return s
	}
	if n := len(r.GetDeviceIds()); n > 0 {
		return fmt.Sprintf("%d devices", n)
	}
	return "-"
}

func newRolloutDevicesCmd(a *app) *cobra.Command {
	var (
		status string
		limit  uint32
	)
	cmd := &cobra.Command{
		Use:               "devices ID",
		Short:             "List a rollout's devices: wave, status, job and attempts",
		Example:           "  ferryctl rollout devices r-20261122-221207-123-b30a0e --status failed",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: rolloutIDCompletion(a, nil),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := a.rollouts()
			if err != nil {
				return err
			}
			execs, next, err := collect(maxPage, limit, func(size uint32, token string) ([]*fleetv1.RolloutExecution, string, error) {
				page, err := client.ListRolloutExecutions(cmd.Context(), connect.NewRequest(&fleetv1.ListRolloutExecutionsRequest{
					RolloutId: args[0], Status: strings.ToUpper(status), PageSize: size, PageToken: token}))
				if err != nil {
					return nil, "", err
				}
				return page.Msg.GetExecutions(), page.Msg.GetNextPageToken(), nil
			})
			if err != nil {
				return err
			}
			out := &fleetv1.ListRolloutExecutionsResponse{Executions: execs, NextPageToken: next}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), out)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEVICE\tWAVE\tSTATUS\tATTEMPTS\tJOB\tGIVEN\tENDED\tNOTE")
			for _, e := range out.GetExecutions() {
				note := e.GetMessage()
				if e.GetRolledBack() {
					note = strings.TrimPrefix(note+"; rollback bundle given", "; ")
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\t%s\t%s\n", e.GetDeviceId(), e.GetWave()+1, e.GetStatus(), e.GetAttempts(),
					orDash(e.GetJobId()), fmtTime(e.GetDispatchTime()), fmtTime(e.GetEndTime()), orDash(note))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if out.GetNextPageToken() != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "(more devices: raise --limit, or --limit 0 for all)\n")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&status, "status", "", "only devices with this status: pending, queued, in_progress, succeeded, failed, rejected, timed_out, rolled_back, canceled")
	cmd.Flags().Uint32Var(&limit, "limit", 0, "at most this many devices (0: all)")
	cmd.RegisterFlagCompletionFunc("status", cobra.FixedCompletions([]string{"pending", "queued", "in_progress", "succeeded",
		"failed", "rejected", "timed_out", "rolled_back", "canceled"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// rolloutTable prints rollouts one a line.
func rolloutTable(w io.Writer, rs []*fleetv1.Rollout) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tBUNDLE\tTARGET\tPROGRESS\tCREATED")
	for _, r := range rs {
		progress := "-"
		if len(r.GetWaves()) > 0 {
			progress = fmt.Sprintf("%d/%d ok", r.GetCounts()["SUCCEEDED"], r.GetTargetCount())
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetId(), orDash(r.GetName()), r.GetState(),
			orDash(r.GetBundle().GetTargetPath()), target(r), progress, fmtTime(r.GetCreateTime()))
	}
	return tw.Flush()
}

// showRollout prints a rollout as a summary and a table of its waves.
func showRollout(w io.Writer, r *fleetv1.Rollout) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	line := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	line("id", "%s", r.GetId())
	if r.GetName() != "" {
		line("name", "%s", r.GetName())
	}
	line("state", "%s", stateWithReason(r))
	line("bundle", "%s", fmtBundle(r.GetBundle()))
	tgt := target(r)
	if n := r.GetTargetCount(); n > 0 || len(r.GetWaves()) > 0 {
		tgt += fmt.Sprintf(" (%d devices)", n)
	}
	if len(r.GetDeviceIds()) > 0 {
		tgt += ": " + strings.Join(r.GetDeviceIds(), ",")
	}
	if r.GetContinuous() {
		tgt += ", continuous"
	}
	line("target", "%s", tgt)
	line("strategy", "%s", fmtStrategy(r))
	rules := make([]string, 0, len(r.GetAbortRules()))
	for _, ar := range r.GetAbortRules() {
		rules = append(rules, fmt.Sprintf("%s >= %s%% of at least %d ended",
			strings.TrimPrefix(ar.GetStatus().String(), "JOB_STATUS_"), fmtFloat(ar.GetPercent()), max(ar.GetMinExecutions(), 1)))
	}
	line("abort when", "%s", orDash(strings.Join(rules, "; ")))
	if rb := r.GetRollbackBundle(); rb != nil {
		line("rollback bundle", "%s", fmtBundle(rb))
	} else {
		line("rollback bundle", "-")
	}
	if t := r.GetStartTime(); t != nil {
		line("start", "%s", fmtTime(t))
	} else {
		line("start", "at creation")
	}
	line("window", "%s", fmtWindow(r.GetMaintenanceWindow()))
	created := fmtTime(r.GetCreateTime())
	if by := r.GetCreatedBy(); by != "" {
		created += " by " + by
	}
	line("created", "%s", created)
	if t := r.GetBeginTime(); t != nil {
		line("began", "%s", fmtTime(t))
	}
	if t := r.GetEndTime(); t != nil {
		line("ended", "%s", fmtTime(t))
	}
	line("counts", "%s", fmtCounts(r.GetCounts()))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.GetWaves()) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tSIZE\tSTATE\tSUCCEEDED\tFAILED\tIN FLIGHT\tPENDING\tSOAK UNTIL")
	for i, wv := range r.GetWaves() {
		c := wv.GetCounts()
		soak := "-"
		if t := wv.GetSoakEndTime(); t != nil {
			soak = fmtTime(t)
		}
		mark := ""
		if uint32(i) == r.GetCurrentWave() && !ended(r.GetState()) {
			mark = "*"
		}
		fmt.Fprintf(tw, "%d%s\t%d\t%s\t%d\t%d\t%d\t%d\t%s\n", i+1, mark, wv.GetSize(), wv.GetState(),
			c["SUCCEEDED"], failed(c), inFlight(c), c["PENDING"], soak)
	}
	return tw.Flush()
}

func fmtBundle(b *devicev1.Bundle) string {
	if b == nil || b.GetTargetPath() == "" {
		return "-"
	}
	sum := b.GetSha256()
	if len(sum) > 12 {
		sum = sum[:12] + "…"
	}
	return fmt.Sprintf("%s (%d bytes, sha256 %s)", b.GetTargetPath(), b.GetLength(), sum)
}

func fmtStrategy(r *fleetv1.Rollout) string {
	st := r.GetStrategy()
	var parts []string
	switch {
	case len(st.GetWaves()) > 0:
		sizes := make([]string, len(st.GetWaves()))
		for i, wv := range st.GetWaves() {
			if c, ok := wv.GetSize().(*fleetv1.Wave_Count); ok {
				sizes[i] = strconv.FormatUint(c.Count, 10)
			} else {
				sizes[i] = fmtFloat(wv.GetPercent()) + "%"
			}
		}
		parts = append(parts, "waves "+strings.Join(sizes, ","))
	case st.GetRate() != nil:
		rt := st.GetRate()
		s := "rate " + fmtFloat(rt.GetBasePerMinute()) + "/min"
		if rt.GetFactor() > 1 {
			s += fmt.Sprintf(", x%s after every %s", fmtFloat(rt.GetFactor()), plural(rt.GetRaiseAfterSuccesses(), "success", "successes"))
		}
		if cur := r.GetCurrentRate(); cur > 0 {
			s += " (now " + fmtFloat(cur) + "/min)"
		}
		parts = append(parts, s)
	default:
		parts = append(parts, "one wave")
	}
	if n := st.GetMaxInFlight(); n > 0 {
		parts = append(parts, fmt.Sprintf("at most %d in flight", n))
	}
	if d := st.GetDeviceTimeout(); d != nil {
		parts = append(parts, "device timeout "+fmtDuration(d.AsDuration()))
	}
	if n := st.GetRetries(); n > 0 {
		parts = append(parts, plural(uint64(n), "retry", "retries"))
	}
	if d := st.GetSoak(); d != nil {
		parts = append(parts, "soak "+fmtDuration(d.AsDuration()))
	}
	return strings.Join(parts, "; ")
}

func fmtWindow(w *fleetv1.MaintenanceWindow) string {
	if w == nil {
		return "any time"
	}
	s := fmt.Sprintf("%s for %s", w.GetStart(), fmtDuration(w.GetDuration().AsDuration()))
	if len(w.GetDays()) > 0 {
		s += " on " + strings.Join(w.GetDays(), ",")
	} else {
		s += " every day"
	}
	tz := w.GetTimeZone()
	if tz == "" {
		tz = "UTC"
	}
	return s + " (" + tz + ")"
}

// fmtCounts lists the counts that are not zero, in countOrder.
func fmtCounts(c map[string]uint64) string {
	keys := slices.Sorted(maps.Keys(c))
	slices.SortStableFunc(keys, func(x, y string) int {
		ix, iy := slices.Index(countOrder, x), slices.Index(countOrder, y)
		if ix < 0 {
			ix = len(countOrder)
		}
		if iy < 0 {
			iy = len(countOrder)
		}
		return ix - iy
	})
	var parts []string
	for _, k := range keys {
		if c[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, c[k]))
		}
	}
	return orDash(strings.Join(parts, ", "))
}

// fmtDuration writes 4h0m0s as 4h and 1h30m0s as 1h30m.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// plural writes "1 retry", "2 retries".
func plural(n uint64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func fmtTime(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().Local().Format("2006-01-02 15:04:05")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// completionTimeout bounds the calls shell completion makes.
const completionTimeout = 3 * time.Second

// rolloutIDCompletion completes a rollout id argument with the newest
// rollouts in one of states (any state when nil).
func rolloutIDCompletion(a *app, states []string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 || a.resolve() != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		client, err := a.rollouts()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(completionContext(cmd), completionTimeout)
		defer cancel()
		resp, err := listRollouts(ctx, client, 200)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, r := range resp.GetRollouts() {
			if states == nil || slices.Contains(states, r.GetState()) {
				desc := r.GetState() + " " + r.GetBundle().GetTargetPath()
				if r.GetName() != "" {
					desc = r.GetName() + ", " + desc
				}
				out = append(out, cobra.CompletionWithDesc(r.GetId(), desc))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveKeepOrder
	}
}

// bundleCompletion completes a bundle's target path with the repository's.
func bundleCompletion(a *app) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if a.resolve() != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		client, err := a.repository()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(completionContext(cmd), completionTimeout)
		defer cancel()
		resp, err := client.ListBundles(ctx, connect.NewRequest(&repositoryv1.ListBundlesRequest{PageSize: 1000}))
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, b := range resp.Msg.GetBundles() {
			out = append(out, b.GetTargetPath())
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func completionContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}
