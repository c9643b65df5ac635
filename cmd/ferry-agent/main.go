// Command ferry-agent is Ferry's reference device agent ("run") and fleet
// simulator ("simulate"). It only wires flags to the agent, agent/transport
// and agent/sim packages.
//
// Every flag can also be set through the environment variable named in its
// help text.
package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/agent/sim"
	"github.com/ferryhq/ferry/agent/transport"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferry-agent:", err)
		os.Exit(1)
	}
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

// devFile returns path when it exists (a development credential), else "".
func devFile(path string) string {
	if _, err := os.Stat(path); err == nil {
		return path
	}
	return ""
}

// server holds the flags that name ferryd.
type server struct {
	deviceAddr, apiURL, caFile, serverName, tufRoot string
	verbose                                         bool
}

func (s *server) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.deviceAddr, "device-addr", envOr("FERRY_DEVICE_ADDR", "localhost:8444"), "ferryd's device port [$FERRY_DEVICE_ADDR]")
	f.StringVar(&s.apiURL, "api-url", envOr("FERRY_API_URL", "https://localhost:8443"), "ferryd's back-office port [$FERRY_API_URL]")
	f.StringVar(&s.caFile, "ca-file", envOr("FERRY_CA_FILE", devFile("ferry-data/pki/ca.pem")), "CA of ferryd's serving certificate, PEM [$FERRY_CA_FILE]")
	f.StringVar(&s.serverName, "server-name", envOr("FERRY_SERVER_NAME", ""), "name to check in ferryd's certificate (default: the host) [$FERRY_SERVER_NAME]")
	f.StringVar(&s.tufRoot, "tuf-root", envOr("FERRY_TUF_ROOT", devFile("ferry-repo/root.json")), "trusted TUF root the device ships with [$FERRY_TUF_ROOT]")
	f.BoolVarP(&s.verbose, "verbose", "v", false, "debug logging")
}

func (s *server) link(small bool) (*transport.Link, []byte, error) {
	if s.caFile == "" {
		return nil, nil, errors.New("--ca-file is required (no ./ferry-data/pki/ca.pem here)")
	}
	pem, err := os.ReadFile(s.caFile)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("%s holds no certificate", s.caFile)
	}
	if s.tufRoot == "" {
		return nil, nil, errors.New("--tuf-root is required (no ./ferry-repo/root.json here)")
	}
	root, err := os.ReadFile(s.tufRoot)
	if err != nil {
		return nil, nil, err
	}
	return transport.New(transport.Config{DeviceAddr: s.deviceAddr, APIURL: s.apiURL, RootCAs: pool, ServerName: s.serverName, SmallBuffers: small}), root, nil
}

func (s *server) logger() *slog.Logger {
	level := slog.LevelInfo
	if s.verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "ferry-agent",
		Short:         "Ferry's reference device agent and fleet simulator",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd(), newSimulateCmd())
	return root
}

func newRunCmd() *cobra.Command {
	var (
		srv                           server
		ident                         identity
		stateDir, hardware            string
		installHook, healthHook       string
		rebootHook, configHook, abDir string
		consentHook, consentSocket    string
		window, inventoryHook         string
		inventoryInterval             time.Duration
		inst                          installerFlags
	)
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the agent of one device",
		Long: `run enrolls the device on first start (with --enrollment-token, or the
factory certificate), then keeps its stream to ferryd open and carries out
every desired state. Keys, certificate and job state live in --state-dir.
A device that already has a certificate and key (such as ferryd's
development devices, ferry-data/pki/devices/dev-1.pem and dev-1.key) gives
them with --cert and --key instead: it does not enroll, and renewed
certificates are written back to those files.

Installing uses --installer: exec (--install-hook, a command called with
the action as its last argument and FERRY_* environment variables), ab (the
built-in A/B installer in --ab-dir), rauc ("rauc install", confirmed with
"rauc status mark-good") or swupdate ("swupdate -i", confirmed in the boot
loader's environment); see docs/agent.md. Without --installer, --install-hook
means exec and --ab-dir means ab. After an install the agent runs
--reboot-hook (or restarts itself), then --health-hook, and confirms or
rolls back.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := srv.logger()
			installer, err := inst.installer(installHook, abDir, stateDir)
			if err != nil {
				return err
			}
			link, root, err := srv.link(false)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(stateDir, 0o700); err != nil {
				return err
			}
			creds, save, err := ident.credentials(ctx, link, stateDir)
			if err != nil {
				return err
			}
			id := deviceID(creds.Leaf())
			cfg := agent.Config{
				Link: link, Credentials: creds, DeviceID: id, Store: agent.FileStore{Path: filepath.Join(stateDir, "state.json")},
				TrustedRoot: root, Installer: installer, Hardware: hardware, DownloadDir: filepath.Join(stateDir, "downloads"),
				AgentVersion: "ferry-agent/" + version(), Logger: log,
				OnRenew: save, StorageDir: stateDir, InventoryInterval: inventoryInterval,
			}
			if inventoryHook != "" {
				cfg.InventoryHook = strings.Fields(inventoryHook)
			}
			if healthHook != "" {
				cfg.Health = agent.Exec{Command: strings.Fields(healthHook)}
			}
			if rebootHook != "" {
				cfg.Rebooter = agent.Exec{Command: strings.Fields(rebootHook)}
			}
			if configHook != "" {
				cfg.ConfigApplier = agent.Exec{Command: strings.Fields(configHook)}
			}
			switch {
			case consentHook != "" && consentSocket != "":
				return errors.New("give --consent-hook or --consent-socket, not both")
			case consentHook != "":
				cfg.Consent = agent.ConsentHook{Command: strings.Fields(consentHook)}
			case consentSocket != "":
				cfg.Consent = agent.ConsentSocket{Path: consentSocket}
			}
			if window != "" {
				if cfg.MaintenanceWindow, err = agent.ParseWindow(window); err != nil {
					return err
				}
			}
			log.InfoContext(ctx, "agent starting", "device", id, "device_addr", srv.deviceAddr)
			for {
				a, err := agent.New(cfg)
				if err != nil {
					return err
				}
				err = a.Run(ctx)
				if !errors.Is(err, agent.ErrRestart) {
					return err
				}
				if rebootHook != "" {
					// The reboot hook returned: wait for the device to go down.
					<-ctx.Done()
					return nil
				}
				log.InfoContext(ctx, "restarting the agent after install")
			}
		},
	}
	srv.flags(cmd)
	f := cmd.Flags()
	f.StringVar(&stateDir, "state-dir", envOr("FERRY_STATE_DIR", "ferry-agent-state"), "device key, certificate and job state [$FERRY_STATE_DIR]")
	ident.flags(cmd)
	f.StringVar(&hardware, "hardware", envOr("FERRY_HARDWARE", ""), "this device's hardware model [$FERRY_HARDWARE]")
	f.StringVar(&inventoryHook, "inventory-hook", envOr("FERRY_INVENTORY_HOOK", ""),
		"command whose key=value output lines add attributes the device reports [$FERRY_INVENTORY_HOOK]")
	f.DurationVar(&inventoryInterval, "inventory-interval", time.Hour, "how often to collect the attributes again (also after each job)")
	f.StringVar(&installHook, "install-hook", envOr("FERRY_INSTALL_HOOK", ""), "install/commit/rollback command [$FERRY_INSTALL_HOOK]")
	f.StringVar(&abDir, "ab-dir", envOr("FERRY_AB_DIR", ""), "directory of the built-in A/B installer's slots [$FERRY_AB_DIR]")
	inst.flags(cmd)
	f.StringVar(&healthHook, "health-hook", envOr("FERRY_HEALTH_HOOK", ""), "health check command after the reboot [$FERRY_HEALTH_HOOK]")
	f.StringVar(&rebootHook, "reboot-hook", envOr("FERRY_REBOOT_HOOK", ""), "reboot command (default: restart the agent) [$FERRY_REBOOT_HOOK]")
	f.StringVar(&configHook, "config-hook", envOr("FERRY_CONFIG_HOOK", ""), "command that applies configuration [$FERRY_CONFIG_HOOK]")
	f.StringVar(&consentHook, "consent-hook", envOr("FERRY_CONSENT_HOOK", ""), "command asked for consent when a desired state requires it; prints accept|later [duration]|decline, then who [$FERRY_CONSENT_HOOK]")
	f.StringVar(&consentSocket, "consent-socket", envOr("FERRY_CONSENT_SOCKET", ""), "Unix socket of an application on the device that answers requests for consent (see docs/agent.md) [$FERRY_CONSENT_SOCKET]")
	f.StringVar(&window, "maintenance-window", envOr("FERRY_MAINTENANCE_WINDOW", ""), `install only inside this daily window, "HH:MM/DURATION[/DAYS][@ZONE]", e.g. "02:00/3h/mon-fri@Europe/Berlin" [$FERRY_MAINTENANCE_WINDOW]`)
	return cmd
}

func deviceID(leaf *x509.Certificate) string {
	for _, u := range leaf.URIs {
		if _, id, ok := strings.Cut(u.Path, "/device/"); ok {
			return id
		}
	}
	return leaf.Subject.CommonName
}

func version() string { return "0.1.0" }

func newSimulateCmd() *cobra.Command {
	var (
		srv                 server
		n, concurrency      int
		prefix, tokenFile   string
		hardware, labels    string
		faults              sim.Faults
		stepDelay, interval time.Duration
		keepBundles         bool
		consentAfter        time.Duration
	)
	cmd := &cobra.Command{
		Use:   "simulate -n N",
		Short: "Run N simulated devices, each with its own key, certificate and mTLS stream",
		Long: `simulate adds N devices (ids PREFIX00001...) with the operator key in
--token-file, enrolls each with a fresh key, and runs a real agent for each
in this process: simulated A/B slots, health check and reboot, with faults
injected at the given rates. It prints the fleet's progress until stopped:
how many devices are connected of how many enrolled, what the simulated
hardware did, and ferryd's fleet summary (job statuses and the bundles the
devices run, most common first). With --keep-bundles each device keeps
its slots' bytes on disk and applies signed patches from the bundle it
runs; without, slots hold only digests and devices download full bundles.
A device that ferryd keeps refusing
(revoked or removed, or ferryd's CA changed) stops retrying, and the
simulator says so once; it exits when ferryd has refused every device.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := srv.logger()
			link, root, err := srv.link(true)
			if err != nil {
				return err
			}
			key, err := os.ReadFile(tokenFile)
			if err != nil {
				return fmt.Errorf("operator key: %w", err)
			}
			dir, err := os.MkdirTemp("", "ferry-sim-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(dir)
			lbl := map[string]string{}
			for kv := range strings.SplitSeq(labels, ",") {
				if k, v, ok := strings.Cut(kv, "="); ok {
					lbl[strings.TrimSpace(k)] = strings.TrimSpace(v)
				}
			}
			if !cmd.Flags().Changed("verbose") {
				log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			}
			reg := transport.NewRegistrar(link, strings.TrimSpace(string(key)))
			start := time.Now()
			simCfg := sim.Config{
				Devices: n, Prefix: prefix, Labels: lbl, Link: link, Enroller: transport.Enroller{Link: link},
				Registrar: reg, TrustedRoot: root,
				Hardware: hardware, Faults: faults, StepDelay: stepDelay, Dir: dir, EnrollConcurrency: concurrency,
				KeepBundles: keepBundles, Logger: log,
			}
			if consentAfter >= 0 {
				simCfg.Consent = &sim.SimulatedConsent{Delay: consentAfter, Actor: "simulated-user"}
			}
			fleet, err := sim.Start(ctx, simCfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%d devices enrolled in %s (%s%0*d ...); stop with Ctrl-C\n", n, time.Since(start).Round(time.Millisecond), prefix, max(len(fmt.Sprint(n)), 5), 1)
			tick := time.NewTicker(interval)
			defer tick.Stop()
			reported, lastErr := 0, ""
			for {
				select {
				case <-ctx.Done():
					return fleet.Wait()
				case <-tick.C:
					if refused := fleet.Refused(); len(refused) > reported {
						for _, line := range sim.DescribeRefusals(refused[reported:]) {
							fmt.Fprintln(out, line)
						}
						reported = len(refused)
					}
					if fleet.Stats.Running.Load() == 0 && fleet.Stats.Refused.Load() > 0 {
						return fmt.Errorf("ferryd refused all %d devices; nothing left to simulate", fleet.Stats.Refused.Load())
					}
					fleetLine, err := summary(ctx, reg)
					if err != nil {
						// Said once per distinct error, not on every line.
						if msg := err.Error(); msg != lastErr {
							fmt.Fprintf(out, "%v (said once; the lines below show fleet=unavailable until it answers)\n", err)
							lastErr = msg
						}
						fleetLine = "fleet=unavailable"
					} else {
						lastErr = ""
					}
					var m runtime.MemStats
					runtime.ReadMemStats(&m)
					fmt.Fprintf(out, "%s %s heap=%.1fMiB goroutines=%d | %s\n",
						time.Now().Format(time.TimeOnly), fleet.Summary(), float64(m.HeapInuse)/(1<<20),
						runtime.NumGoroutine(), fleetLine)
				}
			}
		},
	}
	srv.flags(cmd)
	f := cmd.Flags()
	f.IntVarP(&n, "devices", "n", 10, "how many devices")
	f.StringVar(&prefix, "prefix", "sim-", "device id prefix")
	f.StringVar(&labels, "labels", "fleet=sim", "labels of every device, k=v,k2=v2")
	f.StringVar(&tokenFile, "token-file", envOr("FERRY_TOKEN_FILE", devFile("ferry-data/pki/operator.token")), "operator API key that adds the devices [$FERRY_TOKEN_FILE]")
	f.StringVar(&hardware, "hardware", "", "hardware model of the devices; a comma-separated list gives them these models in turn (gw1,gw2: every other device gw2)")
	f.IntVar(&concurrency, "enroll-concurrency", 16, "parallel enrollments")
	f.Float64Var(&faults.Download, "fail-download", 0, "rate of jobs whose downloads fail")
	f.Float64Var(&faults.Verify, "fail-verify", 0, "rate of jobs whose bundle is altered in transit")
	f.Float64Var(&faults.Install, "fail-install", 0, "rate of jobs whose install fails")
	f.Float64Var(&faults.Health, "fail-health", 0, "rate of jobs whose health check fails (rolled back)")
	f.Float64Var(&faults.Interrupt, "interrupt-download", 0, "rate of jobs whose first download attempt is cut (resumed)")
	f.DurationVar(&stepDelay, "step-delay", 0, "delay added to download, install, reboot and health check")
	f.DurationVar(&interval, "status-every", 5*time.Second, "how often to print the fleet's progress")
	f.DurationVar(&consentAfter, "consent-after", -1, "answer requests for consent: \"later\" for this long, then accept as simulated-user (0: accept at once; negative: devices have no consent hook)")
	f.BoolVar(&keepBundles, "keep-bundles", false, "keep each installed bundle's bytes on disk (two slots per device), so devices apply signed patches (delta updates)")
	return cmd
}

// summary is ferryd's fleet summary as one line: job statuses, then the
// bundles devices run, each sorted by count.
func summary(ctx context.Context, reg *transport.Registrar) (string, error) {
	bundles, statuses, err := reg.FleetSummary(ctx)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("jobs: %s | runs: %s", sim.FormatCounts(statuses), sim.FormatCounts(bundles)), nil
}
