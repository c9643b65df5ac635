package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

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
	cmd.Flags().StringVar(&status, "status", "", "only devices with this status: pending, queued, in_progress, succeeded, failed, rejected, timed_out, rolled_back, canceled, incompatible")
	cmd.Flags().Uint32Var(&limit, "limit", 0, "at most this many devices (0: all)")
	cmd.RegisterFlagCompletionFunc("status", cobra.FixedCompletions([]string{"pending", "queued", "in_progress", "succeeded",
		"failed", "rejected", "timed_out", "rolled_back", "canceled", "incompatible"}, cobra.ShellCompDirectiveNoFileComp))
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
	if n := r.GetIncompatible(); n > 0 {
		line("incompatible", "%d devices left out: the bundle's hardware list does not name their hardware", n)
	}
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
	if c := r.GetConsent(); c != nil {
		line("consent", "%s", fmtConsent(c))
	}
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
