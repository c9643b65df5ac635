// Package bench measures one ferryd end to end on loopback against the
// floor or peer a user would compare it with, in the same run: idle
// device streams (RSS per stream, against a minimal grpc-go mutual-TLS
// server and Mosquitto), fan-out of one SetDesiredState (against one
// Mosquitto publish), signed report ingest on Redis (against signature
// verification alone and redis-benchmark), token-gated downloads over TLS
// (against nginx) and the reconnect storm after a restart (against Go's
// raw TLS handshake rate). It builds and starts the real binaries (ferryd,
// ferry-agent simulate, ferryctl) and the peers as separate processes on
// free loopback ports, and stops every one of them at the end.
//
// cmd/ferry-bench wires it to flags; docs/benchmarks.md has the table of
// a full run.
package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Scenarios in the order they run.
var Scenarios = []string{"streams", "reconnect", "fanout", "reports", "downloads"}

// Options shape one run.
type Options struct {
	// Devices is the number of idle streams (streams and reconnect).
	Devices int
	// FanoutDevices is the number of devices of fan-out and reports
	// (default: Devices, at most 10,000).
	FanoutDevices int
	// Scenarios to run (default: all).
	Scenarios []string
	// Short: smoke sizes and a second or two per measurement.
	Short bool
	// BundleBytes is the downloaded bundle's size (default 100 MiB; 8 MiB
	// with Short).
	BundleBytes int64
	// ReportRounds: how many times every fan-out device reports.
	ReportRounds int
	// FerrydFlags and SimFlags are added to ferryd's and the simulator's
	// command lines (memory and buffer settings).
	FerrydFlags, SimFlags []string
	// Log receives progress lines.
	Log io.Writer
}

// Row is one line of the table.
type Row struct {
	Scenario string
	// What is measured, and Ferry's figure (Ferry) with its unit.
	What  string
	Ferry float64
	Unit  string
	// Peer names the floor or peer and PeerValue its figure, in Unit.
	Peer      string
	PeerValue float64
	// Target is the goal in words; Met says whether Ferry reached it and
	// by how much it missed.
	Target string
	Met    string
	// Note adds what else the run saw.
	Note string
}

// Ratio is Ferry's figure divided by the peer's (NaN without a peer).
func (r Row) Ratio() float64 {
	if r.PeerValue == 0 {
		return math.NaN()
	}
	return r.Ferry / r.PeerValue
}

// Result is a run's table and what it ran on.
type Result struct {
	Rows    []Row
	Elapsed time.Duration
}

func (o *Options) defaults() {
	if o.Devices <= 0 {
		o.Devices = 1000
		if o.Short {
			o.Devices = 200
		}
	}
	if o.FanoutDevices <= 0 {
		o.FanoutDevices = min(o.Devices, 10000)
	}
	if len(o.Scenarios) == 0 {
		o.Scenarios = Scenarios
	}
	if o.BundleBytes <= 0 {
		o.BundleBytes = 100 << 20
		if o.Short {
			o.BundleBytes = 8 << 20
		}
	}
	if o.ReportRounds <= 0 {
		o.ReportRounds = 3
		if o.Short {
			o.ReportRounds = 1
		}
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

// measure picks a duration by size.
func (o *Options) measure(full time.Duration) time.Duration {
	if o.Short {
		return min(full, time.Second)
	}
	return full
}

func (o *Options) wants(s string) bool { return slices.Contains(o.Scenarios, s) }

// Run runs the scenarios and returns the table.
func Run(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	for _, s := range o.Scenarios {
		if !slices.Contains(Scenarios, s) {
			return nil, fmt.Errorf("unknown scenario %q (known: %s)", s, strings.Join(Scenarios, ","))
		}
	}
	start := time.Now()
	if err := ensurePackages(ctx, o.Log); err != nil {
		return nil, err
	}
	e, err := newEnv(o.Log)
	if err != nil {
		return nil, err
	}
	defer e.close()
	e.logf("building ferryd, ferry-agent and ferryctl")
	if err := e.build(ctx); err != nil {
		return nil, err
	}
	redis, err := e.startRedis(ctx)
	if err != nil {
		return nil, err
	}
	f, err := e.startFerryd(ctx, redis.url, o.FerrydFlags)
	if err != nil {
		return nil, err
	}
	res := &Result{}
	add := func(rows []Row, err error) error {
		res.Rows = append(res.Rows, rows...)
		return err
	}
	if o.wants("streams") || o.wants("reconnect") {
		if err := add(streams(ctx, e, f, &o)); err != nil {
			return res, fmt.Errorf("streams: %w", err)
		}
	}
	if o.wants("fanout") || o.wants("reports") || o.wants("downloads") {
		n := o.FanoutDevices
		if o.wants("downloads") {
			n = max(n, 16)
		}
		var peer *mqttFanout
		if o.wants("fanout") {
			if peer, err = mosquittoFanout(ctx, e, o.FanoutDevices); err != nil {
				return res, fmt.Errorf("fanout: %w", err)
			}
		}
		e.logf("enrolling %d devices for fan-out, reports and downloads", n)
		ds, err := f.enrollDevices(ctx, "fanout", n)
		if err != nil {
			return res, fmt.Errorf("enroll: %w", err)
		}
		defer ds.close()
		if o.wants("fanout") {
			if err := add(fanout(ctx, e, f, ds, peer)); err != nil {
				return res, fmt.Errorf("fanout: %w", err)
			}
		}
		if o.wants("reports") {
			if err := add(reports(ctx, e, f, ds, redis, &o)); err != nil {
				return res, fmt.Errorf("reports: %w", err)
			}
		}
		if o.wants("downloads") {
			if err := add(downloads(ctx, e, f, ds, &o)); err != nil {
				return res, fmt.Errorf("downloads: %w", err)
			}
		}
	}
	res.Elapsed = time.Since(start)
	return res, nil
}

// Print writes the table as Markdown.
func (r *Result) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| scenario\t what\t Ferry\t floor / peer, same run\t Ferry ÷ peer\t target\t met\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t")
	for _, row := range r.Rows {
		ratio := "—"
		if !math.IsNaN(row.Ratio()) {
			ratio = fmt.Sprintf("%.2f", row.Ratio())
		}
		peer := "—"
		if row.Peer != "" {
			peer = fmt.Sprintf("%s: %s", row.Peer, format(row.PeerValue, row.Unit))
		}
		what := row.What
		if row.Note != "" {
			what += " (" + row.Note + ")"
		}
		fmt.Fprintf(tw, "| %s\t %s\t %s\t %s\t %s\t %s\t %s\t\n", row.Scenario, what, format(row.Ferry, row.Unit), peer, ratio, orDash(row.Target), orDash(row.Met))
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func format(v float64, unit string) string {
	switch {
	case math.IsNaN(v):
		return "n/a"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%s %s", group(int64(math.Round(v))), unit)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f %s", v, unit)
	default:
		return fmt.Sprintf("%.2f %s", v, unit)
	}
}

// group writes n with thousands separators.
func group(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// atMost is the verdict of a figure that must stay at or below target.
func atMost(v, target float64, unit string) string {
	if v <= target {
		return "met"
	}
	return fmt.Sprintf("missed by %s (%.0f%% over)", format(v-target, unit), (v/target-1)*100)
}

// atLeast is the verdict of a figure that must reach target.
func atLeast(v, target float64, unit string) string {
	if v >= target {
		return "met"
	}
	return fmt.Sprintf("missed by %s (%.0f%% short)", format(target-v, unit), (1-v/target)*100)
}

// percentile of sorted durations, in seconds.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
