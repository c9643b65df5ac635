// Command ferryctl is the Ferry CLI for operators and release engineers.
//
// Each group of commands lives in its own file (device.go, …) and registers
// itself with the root command in newRootCmd. Connection settings come from
// flags, FERRY_* environment variables or the config file (config.go); with
// none of them, ferryctl uses the development credentials in
// ./ferry-data/pki when they exist. Cobra's completion command prints shell
// completion scripts.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	_ "time/tzdata" // --window-tz is checked wherever ferryctl runs

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ferryctl:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	a := &app{}
	root := &cobra.Command{
		Use:           "ferryctl",
		Short:         "Operate a Ferry fleet and publish bundles",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	a.bindFlags(root)
	root.AddCommand(newConfigCmd(a))
	root.AddCommand(newDeviceCmd(a))
	root.AddCommand(newAttestCmd(a))
	root.AddCommand(newFleetCmd(a))
	root.AddCommand(newRepoCmd(a))
	root.AddCommand(newBundleCmd(a))
	root.AddCommand(newRolloutCmd(a))
	root.AddCommand(newTokenCmd(a))
	root.AddCommand(newAuditCmd(a))
	return root
}
