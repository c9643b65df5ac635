package main

import (
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

func newDeviceAddCmd(a *app) *cobra.Command {
	var (
		labels   []string
		reenroll bool
	)
	cmd := &cobra.Command{
		Use:   "add <device-id>",
		Short: "Add a device and print its one-time enrollment token",
		Long: "Add a device to the fleet (or find it) and print a new one-time enrollment token.\n" +
			"The device sends the token with a certificate signing request to CredentialService.Enroll.\n" +
			"A new token voids the device's earlier unused ones. A device that has enrolled gets a new\n" +
			"token only with --reenroll (a lost key, a replaced board).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &fleetv1.AddDeviceRequest{DeviceId: args[0], Labels: map[string]string{}, Reenroll: reenroll}
			for _, l := range labels {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return fmt.Errorf("--label %q: want key=value", l)
				}
				req.Labels[k] = v
			}
			fleet, err := a.fleet()
			if err != nil {
				return err
			}
			resp, err := fleet.AddDevice(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s added; enrollment token (one use, expires %s):\n%s\n",
				resp.Msg.GetDevice().GetId(), resp.Msg.GetEnrollmentExpireTime().AsTime().Local().Format("2006-01-02 15:04 MST"),
				resp.Msg.GetEnrollmentToken())
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&labels, "label", nil, "label key=value (repeatable), for example model=gw2")
	cmd.Flags().BoolVar(&reenroll, "reenroll", false, "issue a token to a device that has enrolled already, so that it enrolls again")
	return cmd
}

func newDeviceRevokeCmd(a *app) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke <device-id>",
		Short: "Revoke a device for good: no renewal, no new connections, its stream closed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fleet, err := a.fleet()
			if err != nil {
				return err
			}
			_, err = fleet.RevokeDevice(cmd.Context(), connect.NewRequest(&fleetv1.RevokeDeviceRequest{DeviceId: args[0], Reason: reason}))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s revoked\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why, recorded with the revocation")
	return cmd
}
