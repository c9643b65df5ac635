package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

func newDeviceCopyConfigCmd(a *app) *cobra.Command {
	var (
		from, selector string
		keys           []string
	)
	cmd := &cobra.Command{
		Use:   "copy-config --from DEVICE_ID --selector LABELS [--keys K1,K2]",
		Short: "Give one device's reported configuration to other devices as desired configuration",
		Long: `copy-config reads the configuration device --from reports and gives it
to every device --selector matches (the source left out) as desired
configuration; each keeps its desired bundle and gets a new desired
version. With --keys only those keys are copied, set on top of each
device's desired configuration; without, the whole configuration
replaces it. The audit trail and each device's history record who did it.`,
		Example: `  ferryctl device copy-config --from gw-17 --selector site=berlin
  ferryctl device copy-config --from gw-17 --selector model=gw2,ring=canary --keys log.level,ntp.server`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" || selector == "" {
				return fmt.Errorf("--from and --selector are required")
			}
			fleet, err := a.fleet()
			if err != nil {
				return err
			}
			resp, err := fleet.CopyConfig(cmd.Context(), connect.NewRequest(&fleetv1.CopyConfigRequest{
				FromDeviceId: from, Selector: selector, Keys: keys,
			}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			ks := slices.Sorted(maps.Keys(resp.Msg.GetConfig()))
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%d devices matching %s: configuration of %s (%s) as desired configuration\n",
				resp.Msg.GetDevicesUpdated(), selector, from, strings.Join(ks, ", "))
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "", "the device whose reported configuration is copied")
	f.StringVar(&selector, "selector", "", "the devices that get it: key=value,key2=value2")
	f.StringSliceVar(&keys, "keys", nil, "only these configuration keys (default: all)")
	return cmd
}
