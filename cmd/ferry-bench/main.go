// Command ferry-bench runs Ferry's end-to-end benchmarks on loopback, each
// beside its floor or peer measured in the same run, and prints one table
// (docs/benchmarks.md). It only wires flags to internal/bench.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ferryhq/ferry/internal/bench"
)

func main() {
	bench.RunRole()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var o bench.Options
	var scenarios, ferrydFlags, simFlags string
	fs := flag.NewFlagSet("ferry-bench", flag.ContinueOnError)
	fs.IntVar(&o.Devices, "n", 0, "idle device streams of the streams and reconnect scenarios (default 1000; 200 with -short)")
	fs.IntVar(&o.FanoutDevices, "fanout-n", 0, "devices of the fan-out and reports scenarios (default: -n, at most 10000)")
	fs.StringVar(&scenarios, "scenarios", strings.Join(bench.Scenarios, ","), "scenarios to run, comma-separated")
	fs.BoolVar(&o.Short, "short", false, "smoke run: small sizes, about a second per measurement")
	fs.Int64Var(&o.BundleBytes, "bundle-bytes", 0, "size of the downloaded bundle (default 100 MiB; 8 MiB with -short)")
	fs.IntVar(&o.ReportRounds, "report-rounds", 0, "reports per fan-out device (default 3; 1 with -short)")
	fs.StringVar(&ferrydFlags, "ferryd-flags", "", "extra ferryd flags, space-separated")
	fs.StringVar(&simFlags, "sim-flags", "", "extra ferry-agent simulate flags, space-separated")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	o.Scenarios = strings.Split(scenarios, ",")
	o.FerrydFlags = strings.Fields(ferrydFlags)
	o.SimFlags = strings.Fields(simFlags)
	o.Log = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := bench.Run(ctx, o)
	if res != nil && len(res.Rows) > 0 {
		res.Print(os.Stdout)
		fmt.Printf("\n%s\n", bench.Machine())
		if res.Elapsed > 0 {
			fmt.Printf("run time: %s\n", res.Elapsed.Round(1e9))
		}
	}
	return err
}
