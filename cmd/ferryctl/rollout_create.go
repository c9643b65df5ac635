package main

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/credentials"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/replica"
)

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
	consent                consentFlags
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
	var err error
	if req.Consent, err = o.consent.policy(); err != nil {
		return nil, err
	}

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
(default UTC).

--require-consent makes each device ask for consent (its consent hook)
before it installs and before it reboots (or only one: install or
reboot); --consent-max-deferral bounds how long it may defer. Waiting for
consent does not count against --device-timeout.`,
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
	o.consent.add(f)
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
