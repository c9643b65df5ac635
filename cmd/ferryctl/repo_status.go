package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
)

func newRepoStatusCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show each TUF role's version and expiry as ferryd serves them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			repo, err := a.repository()
			if err != nil {
				return err
			}
			resp, err := repo.GetRepositoryStatus(cmd.Context(), connect.NewRequest(&repositoryv1.GetRepositoryStatusRequest{}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			if len(resp.Msg.GetRoles()) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no repository yet: create it with ferryctl repo init")
				return nil
			}
			now := resp.Msg.GetNow().AsTime()
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ROLE\tVERSION\tEXPIRES\tIN\tSIGNED BY\tSTATUS")
			for _, r := range resp.Msg.GetRoles() {
				exp := r.GetExpireTime().AsTime()
				by, status := "offline keys", "ok"
				if r.GetOnline() {
					by = "ferryd"
				}
				switch {
				case r.GetExpired():
					status = "EXPIRED"
				case r.GetExpiresSoon():
					status = "expires soon"
				}
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", r.GetRole(), r.GetVersion(), exp.UTC().Format(time.RFC3339),
					exp.Sub(now).Round(time.Minute), by, status)
			}
			return w.Flush()
		},
	}
}
