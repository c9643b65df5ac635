package main

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/credentials"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
)

func newAttestCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "attest", Short: "Fetch and verify devices' signed reports"}
	cmd.AddCommand(newAttestVerifyCmd(a))
	return cmd
}

func newAttestVerifyCmd(a *app) *cobra.Command {
	var (
		deviceCA     string
		trustDomain  string
		envelopeFile string
		chainFile    string
		save         string
	)
	cmd := &cobra.Command{
		Use:   "verify [DEVICE_ID [JOB_ID]]",
		Short: "Verify a device's signed report against the device CA, offline",
		Long: `Verify checks a signed report (a DSSE envelope over an in-toto statement) with
nothing but the device CA certificate: the certificate chain at the time the
report was made, the device identity in it, the signature, and that the
report is about that device. The report comes from ferryd (DEVICE_ID JOB_ID,
through GetAttestation; without JOB_ID, the device's latest job, as
ferryctl device get shows it) or from files (--envelope and --chain, for
example saved earlier with --save).`,
		Example: `  ferryctl attest verify dev-1 --device-ca ferry-data/pki/ca.pem
  ferryctl attest verify dev-1 job-9b2e720bafd4cd07ccb8 --device-ca ferry-data/pki/ca.pem
  ferryctl attest verify --envelope report.dsse.json --chain device-chain.pem --device-ca ca.pem`,
		Args: func(cmd *cobra.Command, args []string) error {
			if envelopeFile != "" {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.RangeArgs(1, 2)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var envelope []byte
			var chain [][]byte
			if envelopeFile != "" {
				var err error
				if envelope, err = os.ReadFile(envelopeFile); err != nil {
					return err
				}
				certs, err := credentials.ReadCertFile(chainFile)
				if err != nil {
					return fmt.Errorf("--chain: %w", err)
				}
				for _, c := range certs {
					chain = append(chain, c.Raw)
				}
			} else {
				fleet, err := a.fleet()
				if err != nil {
					return err
				}
				var job string
				if len(args) == 2 {
					job = args[1]
				} else {
					d, err := fleet.GetDevice(cmd.Context(), connect.NewRequest(&fleetv1.GetDeviceRequest{DeviceId: args[0]}))
					if err != nil {
						return err
					}
					j := d.Msg.GetDevice().GetJob()
					if j.GetId() == "" {
						return fmt.Errorf("%s has no job yet: give it a desired state first (ferryctl device set-desired)", args[0])
					}
					if final := j.GetStatus() != devicev1.JobStatus_JOB_STATUS_QUEUED && j.GetStatus() != devicev1.JobStatus_JOB_STATUS_IN_PROGRESS; !final {
						return fmt.Errorf("%s's latest job %s is %s: its signed report comes when it ends (or give an earlier JOB_ID, see ferryctl device events %s)",
							args[0], j.GetId(), jobStatus(j), args[0])
					}
					job = j.GetId()
				}
				resp, err := fleet.GetAttestation(cmd.Context(), connect.NewRequest(&fleetv1.GetAttestationRequest{DeviceId: args[0], JobId: job}))
				if err != nil {
					return err
				}
				envelope, chain = resp.Msg.GetEnvelope(), resp.Msg.GetCertificateChain()
			}
			if deviceCA == "" {
				return fmt.Errorf("--device-ca is required: the CA certificate that issues device certificates")
			}
			cas, err := credentials.ReadCertFile(deviceCA)
			if err != nil {
				return fmt.Errorf("--device-ca: %w", err)
			}
			roots := x509.NewCertPool()
			for _, c := range cas {
				roots.AddCert(c)
			}
			st, verified, err := attest.Verify(envelope, chain, roots, trustDomain, time.Time{})
			if err != nil {
				return err
			}
			if save != "" {
				if err := os.WriteFile(save+".dsse.json", envelope, 0o644); err != nil {
					return err
				}
				if err := credentials.WriteCertFile(save+".chain.pem", verified[:len(verified)-1]...); err != nil {
					return err
				}
			}
			if a.output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			p := st.Predicate
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "verified: signed by %s (certificate %s, issued by %s)\n", p.Device,
				verified[0].SerialNumber.Text(16), verified[0].Issuer.CommonName)
			fmt.Fprintf(w, "job %s, desired version %d: %s", p.JobID, p.DesiredVersion, p.Status)
			if p.Step != "" || p.ErrorCode != "" {
				fmt.Fprintf(w, " at %s %s", p.Step, p.ErrorCode)
			}
			fmt.Fprintf(w, "\nat %s\n", p.Time.Format(time.RFC3339))
			for _, s := range st.Subject {
				fmt.Fprintf(w, "runs %s sha256:%s\n", s.Name, s.Digest["sha256"])
			}
			if len(p.Config) > 0 {
				var kv []string
				for _, k := range slices.Sorted(maps.Keys(p.Config)) {
					kv = append(kv, k+"="+p.Config[k])
				}
				fmt.Fprintf(w, "config %s\n", strings.Join(kv, " "))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&deviceCA, "device-ca", envOr("FERRY_DEVICE_CA", devFile("ca.pem")), "device CA certificate, PEM [$FERRY_DEVICE_CA]")
	f.StringVar(&trustDomain, "trust-domain", envOr("FERRY_TRUST_DOMAIN", "ferry.local"), "trust domain of device identities [$FERRY_TRUST_DOMAIN]")
	f.StringVar(&envelopeFile, "envelope", "", "verify this DSSE envelope file instead of fetching one")
	f.StringVar(&chainFile, "chain", "", "the device certificate chain (PEM) for --envelope")
	f.StringVar(&save, "save", "", "also write PREFIX.dsse.json and PREFIX.chain.pem, for later offline checks")
	return cmd
}
