package main

import (
	"crypto"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"connectrpc.com/connect"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferryhq/ferry/audit"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
)

func (a *app) auditClient() (fleetv1connect.AuditServiceClient, error) {
	return newClient(a, fleetv1connect.NewAuditServiceClient)
}

func newAuditCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read, export and verify the audit trail (role auditor or admin)",
		Long: "The audit trail holds every mutating operator call, every enrollment, renewal and revocation,\n" +
			"and every call refused to an operator's role, hash-chained in ferryd's store.",
	}
	cmd.AddCommand(newAuditListCmd(a), newAuditExportCmd(a), newAuditVerifyCmd())
	return cmd
}

// parseWhen reads --since and --until: an RFC 3339 time, or a duration
// back from now (24h).
func parseWhen(flag, s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(strings.TrimPrefix(s, "-")); err == nil && d >= 0 {
		return timestamppb.New(now.Add(-d)), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return nil, fmt.Errorf("--%s %q: want an RFC 3339 time (2026-11-23T02:00:00Z) or a duration back from now (24h)", flag, s)
	}
	return timestamppb.New(t), nil
}

func newAuditListCmd(a *app) *cobra.Command {
	var (
		since, until                    string
		actor, action, resource, result string
		limit                           int
		pageToken                       string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List audit entries, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			now := time.Now()
			req := &fleetv1.ListAuditEventsRequest{Actor: actor, Action: action, Resource: resource, Result: result, PageToken: pageToken}
			var err error
			if req.Since, err = parseWhen("since", since, now); err != nil {
				return err
			}
			if req.Until, err = parseWhen("until", until, now); err != nil {
				return err
			}
			if limit <= 0 || limit > 1000 {
				return fmt.Errorf("--limit %d: want 1 to 1000", limit)
			}
			req.PageSize = uint32(limit)
			c, err := a.auditClient()
			if err != nil {
				return err
			}
			resp, err := c.ListAuditEvents(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if a.output == "json" {
				return printJSON(cmd.OutOrStdout(), resp.Msg)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "TIME\tACTOR\tROLE\tACTION\tRESOURCE\tRESULT\tPEER\tCHAIN/SEQ")
			for _, e := range resp.Msg.GetEvents() {
				act := e.GetAction()
				act = act[strings.LastIndex(act, "/")+1:]
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\n", e.GetTime().AsTime().Local().Format(time.RFC3339),
					e.GetActor(), dash(e.GetRole()), act, dash(e.GetResource()), e.GetResult(), dash(e.GetPeer()), e.GetChain(), e.GetSeq())
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if next := resp.Msg.GetNextPageToken(); next != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "more: --page-token %s\n", next)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&since, "since", "", "from this time (RFC 3339, or a duration back from now: 24h)")
	f.StringVar(&until, "until", "", "before this time (RFC 3339, or a duration back from now)")
	f.StringVar(&actor, "actor", "", "only this actor (operator:<name> or device:<id>)")
	f.StringVar(&action, "action", "", "only this action (the end of the procedure, for example AddDevice)")
	f.StringVar(&resource, "resource", "", "only entries about this device, rollout or target")
	f.StringVar(&result, "result", "", "only this result (ok, permission_denied, ...)")
	f.IntVar(&limit, "limit", 100, "entries per page (at most 1000)")
	f.StringVar(&pageToken, "page-token", "", "the next page, as the previous one said")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newAuditExportCmd(a *app) *cobra.Command {
	var since, until, out string
	cmd := &cobra.Command{
		Use:   "export --since TIME [--until TIME] --out FILE",
		Short: "Write a signed audit bundle of a span, to check offline with ferryctl audit verify",
		Long: "Write a bundle of the audit entries of [since, until) (with the entry before the span of each chain,\n" +
			"so verification is anchored), the devices' signed reports of the jobs that ended in the span, and a\n" +
			"DSSE signature over the bundle's digest by ferryd's audit key, with that key's public key.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since == "" || out == "" {
				return errors.New("--since and --out are required")
			}
			now := time.Now()
			req := &fleetv1.ExportAuditRequest{}
			var err error
			if req.Since, err = parseWhen("since", since, now); err != nil {
				return err
			}
			if req.Until, err = parseWhen("until", until, now); err != nil {
				return err
			}
			c, err := a.auditClient()
			if err != nil {
				return err
			}
			resp, err := c.ExportAudit(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, resp.Msg.GetBundle(), 0o644); err != nil {
				return err
			}
			rep, err := audit.Verify(resp.Msg.GetBundle(), nil)
			if err != nil {
				return fmt.Errorf("the bundle ferryd sent does not verify: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d entries on %d chains, %d attestations\n", out, rep.Entries, rep.Chains, rep.Attestations)
			return nil
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "start of the span (RFC 3339, or a duration back from now: 720h)")
	cmd.Flags().StringVar(&until, "until", "", "end of the span, exclusive (default: now)")
	cmd.Flags().StringVar(&out, "out", "", "file to write the bundle to")
	return cmd
}

func newAuditVerifyCmd() *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "verify FILE",
		Short: "Check an audit bundle offline: signature, digest and every chain link",
		Long: "Check an audit bundle without ferryd. With --key (the audit key's public key, PEM), the signature must\n" +
			"be by that key; without it, by the key the bundle carries, which proves the bundle is whole but not\n" +
			"who signed it. A removed, reordered or edited entry is reported with its chain and sequence number.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			var pub crypto.PublicKey
			if keyFile != "" {
				pemKey, err := os.ReadFile(keyFile)
				if err != nil {
					return err
				}
				if pub, err = cryptoutils.UnmarshalPEMToPublicKey(pemKey); err != nil {
					return fmt.Errorf("--key %s: %w", keyFile, err)
				}
			}
			rep, err := audit.Verify(raw, pub)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			how := "the key given"
			if rep.KeyFromBundle {
				how = "the key it carries (give --key to check who signed it)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: OK: %d entries on %d chains and %d attestations, signed by %s\n",
				args[0], rep.Entries, rep.Chains, rep.Attestations, how)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "public key (PEM) the bundle must be signed by")
	return cmd
}
