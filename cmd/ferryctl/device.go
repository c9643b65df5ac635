package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

func newDeviceCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "device", Short: "Query and steer devices"}
	cmd.AddCommand(newDeviceListCmd(a), newDeviceGetCmd(a), newDeviceSetDesiredCmd(a))
	cmd.AddCommand(newDeviceAddCmd(a), newDeviceRevokeCmd(a))
	cmd.AddCommand(newDeviceEventsCmd(a), newDeviceCopyConfigCmd(a))
	return cmd
}

func newDeviceListCmd(a *app) *cobra.Command {
	var all, wide bool
	var pageSize uint32
	var filter fleetv1.ListDevicesRequest
	var status string
	var silentFor time.Duration
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List devices with their desired and reported versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fleet, err := a.fleet()
			if err != nil {
				return err
			}
			if status != "" {
				v, ok := devicev1.JobStatus_value["JOB_STATUS_"+strings.ToUpper(status)]
				if !ok {
					return fmt.Errorf("--status %q: want one of QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, ROLLED_BACK, REJECTED, CANCELED, TIMED_OUT", status)
				}
				filter.JobStatus = devicev1.JobStatus(v)
			}
			if silentFor > 0 {
				filter.SeenBefore = timestamppb.New(time.Now().Add(-silentFor))
			}
			resp := &fleetv1.ListDevicesResponse{}
			token := ""
			for {
				req := &fleetv1.ListDevicesRequest{PageSize: pageSize, PageToken: token, LabelSelector: filter.LabelSelector,
					Bundle: filter.Bundle, JobStatus: filter.JobStatus, SeenBefore: filter.SeenBefore}
				page, err := fleet.ListDevices(cmd.Context(), connect.NewRequest(req))
				if err != nil {
					return err
				}
				resp.Devices = append(resp.Devices, page.Msg.GetDevices()...)
				token = page.Msg.GetNextPageToken()
				if token == "" || !all {
					resp.NextPageToken = token
					break
				}
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			return deviceTable(cmd.OutOrStdout(), resp.GetDevices(), wide)
		},
	}
	cmd.Flags().BoolVar(&all, "all", true, "follow pages to the end")
	cmd.Flags().BoolVarP(&wide, "wide", "w", false, "also show each device's job id (for attest verify) and desired bundle")
	cmd.Flags().Uint32Var(&pageSize, "page-size", 500, "devices per request")
	cmd.Flags().StringVarP(&filter.LabelSelector, "selector", "l", "", "only devices matching this selector over labels and attributes (attr.<key>): key=value,key!=v,key in (a,b),key notin (a,b),!key")
	cmd.Flags().StringVar(&filter.LabelSelector, "label", "", "the same as --selector")
	_ = cmd.Flags().MarkDeprecated("label", "use --selector")
	cmd.Flags().StringVar(&filter.Bundle, "bundle", "", "only devices running this bundle target path ((none): no bundle)")
	cmd.Flags().StringVar(&status, "status", "", "only devices whose job has this status (QUEUED, SUCCEEDED, FAILED, ...)")
	cmd.Flags().DurationVar(&silentFor, "silent-for", 0, "only devices not seen for this long (or never)")
	return cmd
}

func newDeviceEventsCmd(a *app) *cobra.Command {
	var limit uint32
	cmd := &cobra.Command{
		Use:   "events DEVICE_ID",
		Short: "Show a device's history, newest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fleet, err := a.fleet()
			if err != nil {
				return err
			}
			resp, err := fleet.ListDeviceEvents(cmd.Context(), connect.NewRequest(&fleetv1.ListDeviceEventsRequest{DeviceId: args[0], PageSize: limit}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tEVENT\tVERSION\tJOB\tSTATUS\tDETAIL\tBY")
			for _, ev := range resp.Msg.GetEvents() {
				st := strings.TrimPrefix(ev.GetStatus().String(), "JOB_STATUS_")
				if s := ev.GetStep(); s != devicev1.Step_STEP_UNSPECIFIED {
					st += "/" + strings.TrimPrefix(s.String(), "STEP_")
				}
				detail := strings.TrimSpace(ev.GetErrorCode() + " " + ev.GetMessage())
				if detail == "" {
					detail = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\tv%d\t%s\t%s\t%s\t%s\n", ev.GetTime().AsTime().Local().Format("2006-01-02 15:04:05"),
					ev.GetKind(), ev.GetDesiredVersion(), ev.GetJobId(), st, detail, ev.GetActor())
			}
			return tw.Flush()
		},
	}
	cmd.Flags().Uint32Var(&limit, "limit", 20, "how many events")
	return cmd
}

func newDeviceGetCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:     "get DEVICE_ID",
		Aliases: []string{"show"},
		Short:   "Show one device: labels, desired and reported state, its job (with the job id) and when it was seen",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			fleet, err := a.fleet()
			if err != nil {
				return err
			}
			resp, err := fleet.GetDevice(cmd.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: args[0]}))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			return deviceDetails(cmd.OutOrStdout(), resp.Msg.GetDevice())
		},
	}
}

// deviceDetails prints one device, a field a line.
func deviceDetails(w io.Writer, d *fleetv1.Device) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	line := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, args...)...) }
	line("device", "%s", d.GetId())
	line("labels", "%s", fmtMap(d.GetLabels()))
	line("attributes", "%s", fmtMap(d.GetAttributes()))
	des := d.GetDesired()
	line("desired", "v%d: %s", des.GetVersion(), fmtBundle(des.GetDocument().GetBundle()))
	if c := des.GetDocument().GetConfig(); len(c) > 0 {
		line("desired config", "%s", fmtMap(c))
	}
	if c := des.GetDocument().GetConsent(); c != nil {
		line("consent", "%s", fmtConsent(c))
	}
	if des.GetSetBy() != "" {
		line("set by", "%s at %s", des.GetSetBy(), des.GetSetTime().AsTime().Local().Format("2006-01-02 15:04:05"))
	}
	rep := d.GetReported()
	evidence := ""
	if rep.GetReportTime() != nil {
		evidence = " (unsigned report)"
		if rep.GetSigned() {
			evidence = " (signed report)"
		}
	}
	line("reported", "v%d: %s%s", rep.GetDesiredVersion(), fmtBundle(rep.GetState().GetBundle()), evidence)
	if c := rep.GetState().GetConfig(); len(c) > 0 {
		line("reported config", "%s", fmtMap(c))
	}
	if c := d.GetClaim(); c != nil {
		// What the device said without a signature, apart from what it
		// proved.
		line("claims", "%s (unsigned Hello %s; last applied v%d)", fmtBundle(c.GetState().GetBundle()),
			ago(c.GetClaimTime()), c.GetLastAppliedDesiredVersion())
		if cfg := c.GetState().GetConfig(); len(cfg) > 0 {
			line("claimed config", "%s", fmtMap(cfg))
		}
	}
	if v := rep.GetAgentVersion(); v != "" {
		line("agent", "%s", v)
	}
	if j := d.GetJob(); j != nil && j.GetId() != "" {
		line("job", "%s: %s", j.GetId(), jobStatus(j))
		if m := j.GetMessage(); m != "" {
			line("job message", "%s", m)
		}
		if dl := fmtDownload(j); dl != "" {
			line("downloaded", "%s", dl)
		}
	} else {
		line("job", "-")
	}
	line("last seen", "%s", ago(d.GetLastSeenTime()))
	return tw.Flush()
}

// fmtMap writes k=v pairs in key order, "-" for none.
func fmtMap(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	var kv []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		kv = append(kv, k+"="+m[k])
	}
	return strings.Join(kv, ",")
}

// fmtDownload says how much a job downloaded and how: "1258291 bytes as a
// delta patch". Empty when the device said nothing.
func fmtDownload(j *fleetv1.Job) string {
	how := ""
	switch j.GetDownloadMethod() {
	case devicev1.DownloadMethod_DOWNLOAD_METHOD_FULL:
		how = " as the full bundle"
	case devicev1.DownloadMethod_DOWNLOAD_METHOD_DELTA:
		how = " as a delta patch"
	}
	n := j.GetBytesDownloaded()
	if n == 0 && how == "" {
		return ""
	}
	return fmt.Sprintf("%d bytes%s", n, how)
}

// jobStatus is a job's status, with its step and error code if any.
func jobStatus(j *fleetv1.Job) string {
	s := strings.TrimPrefix(j.GetStatus().String(), "JOB_STATUS_")
	if st := j.GetStep(); st != devicev1.Step_STEP_UNSPECIFIED {
		s += "/" + strings.TrimPrefix(st.String(), "STEP_")
	}
	if c := j.GetErrorCode(); c != "" {
		s += " (" + c + ")"
	}
	return s
}

func newDeviceSetDesiredCmd(a *app) *cobra.Command {
	var (
		bundle   devicev1.Bundle
		fromRepo string
		forced   bool
		config   map[string]string
		expect   int64
		selector string
		consent  consentFlags
	)
	cmd := &cobra.Command{
		Use:   "set-desired [DEVICE_ID | --selector LABELS]",
		Short: "Set the desired state of a device, or of every device with some labels",
		Example: `  ferryctl device set-desired dev-1 --bundle gateway/2.0.0/fw.bin
  ferryctl device set-desired dev-1 --target gateway/fw-2.0.0.bin --length 1048576 \
    --sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 --config log.level=debug
  ferryctl device set-desired --selector model=gw2,ring=canary --config log.level=info`,
		Args: func(cmd *cobra.Command, args []string) error {
			if selector != "" {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			fleet, err := a.fleet()
			if err != nil {
				return err
			}
			req := &fleetv1.SetDesiredStateRequest{
				Selector: selector,
				Document: &devicev1.DesiredDocument{Forced: forced, Config: config},
			}
			if len(args) == 1 {
				req.DeviceId = args[0]
			}
			if req.Document.Consent, err = consent.policy(); err != nil {
				return err
			}
			switch {
			case fromRepo != "" && bundle.TargetPath != "":
				return errors.New("give --bundle (read from the repository) or --target, --length and --sha256, not both")
			case fromRepo != "":
				if req.Document.Bundle, err = resolveBundle(cmd.Context(), a, fromRepo); err != nil {
					return fmt.Errorf("--bundle: %w", err)
				}
			case bundle.TargetPath != "":
				req.Document.Bundle = &bundle
			}
			if expect >= 0 {
				v := uint64(expect)
				req.ExpectedVersion = &v
			}
			resp, err := fleet.SetDesiredState(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			if selector != "" {
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%d devices matching %s: new desired state\n", resp.Msg.GetDevicesUpdated(), selector)
				return err
			}
			d := resp.Msg.GetDevice().GetDesired()
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s: desired version %d, job %s\n", args[0], d.GetVersion(), d.GetJobId())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&fromRepo, "bundle", "", "TUF target path of a published bundle (its length and SHA-256 read from the repository)")
	f.StringVar(&bundle.TargetPath, "target", "", "TUF target path of the bundle")
	f.Uint64Var(&bundle.Length, "length", 0, "length of the bundle in bytes")
	f.StringVar(&bundle.Sha256, "sha256", "", "SHA-256 of the bundle, hex")
	f.BoolVar(&forced, "forced", false, "allow a downgrade")
	f.StringToStringVar(&config, "config", nil, "configuration key=value (repeatable)")
	f.Int64Var(&expect, "expect-version", -1, "apply only if the desired version is still this one")
	f.StringVar(&selector, "selector", "", "every device matching this selector over labels and attributes (attr.<key>), e.g. ring=canary,attr.hardware in (gw2,gw3)")
	consent.add(f)
	cmd.RegisterFlagCompletionFunc("bundle", bundleCompletion(a))
	return cmd
}

// deviceTable prints devices one a line; wide adds the job id and the
// desired bundle.
func deviceTable(w io.Writer, devs []*fleetv1.Device, wide bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if wide {
		fmt.Fprintln(tw, "DEVICE\tDESIRED\tREPORTED\tRUNS\tJOB\tJOB ID\tDESIRED BUNDLE\tLAST SEEN")
	} else {
		fmt.Fprintln(tw, "DEVICE\tDESIRED\tREPORTED\tRUNS\tJOB\tLAST SEEN")
	}
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, d := range devs {
		job := "-"
		if j := d.GetJob(); j != nil {
			job = jobStatus(j)
		}
		runs := dash(d.GetReported().GetState().GetBundle().GetTargetPath())
		if wide {
			fmt.Fprintf(tw, "%s\tv%d\tv%d\t%s\t%s\t%s\t%s\t%s\n", d.GetId(), d.GetDesired().GetVersion(),
				d.GetReported().GetDesiredVersion(), runs, job, dash(d.GetJob().GetId()),
				dash(d.GetDesired().GetDocument().GetBundle().GetTargetPath()), ago(d.GetLastSeenTime()))
			continue
		}
		fmt.Fprintf(tw, "%s\tv%d\tv%d\t%s\t%s\t%s\n", d.GetId(), d.GetDesired().GetVersion(),
			d.GetReported().GetDesiredVersion(), runs, job, ago(d.GetLastSeenTime()))
	}
	return tw.Flush()
}

func ago(t *timestamppb.Timestamp) string {
	if t == nil {
		return "never"
	}
	return time.Since(t.AsTime()).Round(time.Second).String() + " ago"
}
