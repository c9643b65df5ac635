package main

import (
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

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
		if n := r.GetIncompatible(); n > 0 {
			fmt.Fprintf(&b, "; %d incompatible (left out)", n)
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
