package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
)

func newTokenCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage the keys that sign download tokens",
		Long: "Download tokens are signed with the current key of a keyset every ferryd on the store shares;\n" +
			"each token names its key (the JWT \"kid\"). A rotation makes a new current key and keeps the old one\n" +
			"verifying the tokens it signed until its grace ends.",
	}
	cmd.AddCommand(newTokenKeysCmd(a), newTokenRotateKeyCmd(a))
	return cmd
}

func (a *app) downloadKeys() (credentialsv1connect.DownloadKeyServiceClient, error) {
	return newClient(a, credentialsv1connect.NewDownloadKeyServiceClient)
}

func newTokenKeysCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "keys",
		Short: "List the download token keys: the current one and those still in their grace",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.downloadKeys()
			if err != nil {
				return err
			}
			resp, err := c.ListDownloadKeys(cmd.Context(), connect.NewRequest(&credentialsv1.ListDownloadKeysRequest{}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			return printKeys(cmd.OutOrStdout(), resp.Msg.GetCurrent(), resp.Msg.GetPrevious())
		},
	}
}

func newTokenRotateKeyCmd(a *app) *cobra.Command {
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "rotate-key",
		Short: "Make a new download token key current; the old one verifies until its grace ends",
		Long: "Make a new random download token key the current one on every ferryd sharing the store. Tokens\n" +
			"signed with the key it replaces keep working until the grace ends: by default the server's\n" +
			"--download-key-grace (the token lifetime plus five minutes). --grace 0 retires the old key at\n" +
			"once, for a key that leaked: every token it signed is refused from then on. Needs the admin role.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &credentialsv1.RotateDownloadKeyRequest{}
			if cmd.Flags().Changed("grace") {
				if grace < 0 {
					return fmt.Errorf("--grace %v: want 0 or more", grace)
				}
				req.Grace = durationpb.New(grace)
			}
			c, err := a.downloadKeys()
			if err != nil {
				return err
			}
			resp, err := c.RotateDownloadKey(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "download token key rotated: new tokens are signed with %s\n", resp.Msg.GetCurrent().GetId())
			return printKeys(cmd.OutOrStdout(), resp.Msg.GetCurrent(), resp.Msg.GetPrevious())
		},
	}
	cmd.Flags().DurationVar(&grace, "grace", 0, "how long the replaced key keeps verifying its tokens (default: the server's setting; 0: at once)")
	return cmd
}

func printKeys(w io.Writer, current *credentialsv1.DownloadKey, previous []*credentialsv1.DownloadKey) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tSTATE\tCREATED\tRETIRES")
	row := func(k *credentialsv1.DownloadKey, state string) {
		if k.GetLegacy() {
			state += " (also tokens without kid)"
		}
		retires := "-"
		if rt := k.GetRetireTime(); rt != nil {
			retires = rt.AsTime().Local().Format(time.DateTime)
			if left := time.Until(rt.AsTime()); left > 0 {
				retires += fmt.Sprintf(" (in %s)", left.Round(time.Second))
			} else {
				retires += " (retired)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.GetId(), state, k.GetCreateTime().AsTime().Local().Format(time.DateTime), retires)
	}
	row(current, "current")
	for _, k := range previous {
		row(k, "previous")
	}
	return tw.Flush()
}
