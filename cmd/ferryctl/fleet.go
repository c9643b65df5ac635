package main

import (
	"fmt"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

func newFleetCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "fleet", Short: "See the fleet as a whole"}
	cmd.AddCommand(newFleetSummaryCmd(a))
	return cmd
}

func newFleetSummaryCmd(a *app) *cobra.Command {
	var silentAfter time.Duration
	cmd := &cobra.Command{
		Use:   "summary",
		Short: "Count devices per bundle and per job status, and the silent ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fleet, err := a.fleet()
			if err != nil {
				return err
			}
			resp, err := fleet.GetFleetSummary(cmd.Context(), connect.NewRequest(&fleetv1.GetFleetSummaryRequest{
				SilentAfter: durationpb.New(silentAfter),
			}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			m := resp.Msg
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "devices\t%d\n", m.GetTotalDevices())
			fmt.Fprintf(w, "silent for %s\t%d\n", silentAfter, m.GetSilentDevices())
			fmt.Fprintln(w, "\nBUNDLE\tDEVICES")
			for _, b := range slices.Sorted(maps.Keys(m.GetDevicesPerBundle())) {
				fmt.Fprintf(w, "%s\t%d\n", b, m.GetDevicesPerBundle()[b])
			}
			fmt.Fprintln(w, "\nJOB STATUS\tDEVICES")
			for _, s := range slices.Sorted(maps.Keys(m.GetDevicesPerStatus())) {
				fmt.Fprintf(w, "%s\t%d\n", s, m.GetDevicesPerStatus()[s])
			}
			return w.Flush()
		},
	}
	cmd.Flags().DurationVar(&silentAfter, "silent-after", time.Hour, "a device not seen for this long counts as silent")
	return cmd
}
