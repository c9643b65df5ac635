package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
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
