// Command ferryd is the Ferry server. With no flags it runs with embedded
// defaults: a data directory with a development PKI and the embedded store.
//
// Every flag can also be set through the environment variable named in its
// help text (FERRY_ and the flag name in upper case, dashes as underscores).
//
// "ferryd healthcheck" probes a running ferryd's /readyz (or /healthz) and
// exits 0 when it answers 200: a container image's HEALTHCHECK.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	_ "time/tzdata" // maintenance windows name time zones; servers may have no zone files

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/console"
	"github.com/ferryhq/ferry/server"

	_ "gocloud.dev/blob/s3blob" // s3:// repository storage (S3 and S3-compatible)
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ferryd:", err)
		os.Exit(1)
	}
}

func run() error {
	if len(os.Args) > 1 && os.Args[1] == "healthcheck" {
		return healthcheck(os.Args[2:])
	}
	cfg := server.DefaultConfig()
	fs := flag.NewFlagSet("ferryd", flag.ContinueOnError)
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the embedded store and the development PKI")
	fs.StringVar(&cfg.DeviceAddr, "device-addr", cfg.DeviceAddr, "device port (gRPC, mutual TLS)")
	fs.StringVar(&cfg.APIAddr, "api-addr", cfg.APIAddr, "back-office port (Connect, gRPC health, metrics; HTTPS)")
	fs.StringVar(&cfg.RedisURL, "redis-url", cfg.RedisURL, "Redis store: redis[s]://[user:password@]host:port/db, redis[s]+cluster://[user:password@]host:port,host:port,... or redis[s]+sentinel://[user:password@]host:port,host:port,.../master[/db] (default: embedded store)")
	fs.StringVar(&cfg.RedisPrefix, "redis-prefix", cfg.RedisPrefix, "prefix of every Redis key")
	fs.DurationVar(&cfg.RedisConnectTimeout, "redis-connect-timeout", cfg.RedisConnectTimeout, "how long to keep trying to reach Redis at start before giving up")
	fs.IntVar(&cfg.RedisMinReplicas, "redis-min-replicas", cfg.RedisMinReplicas, "replicas that must confirm each acknowledged device and rollout write (Redis WAIT), so that it survives a failover; 0: do not wait")
	fs.DurationVar(&cfg.RedisMinReplicasTimeout, "redis-min-replicas-timeout", cfg.RedisMinReplicasTimeout, "how long a write waits for --redis-min-replicas replicas before it fails as unavailable")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", cfg.TrustDomain, "trust domain of device SPIFFE IDs")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "serving certificate chain, PEM (default: development PKI)")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "serving key, PEM")
	fs.StringVar(&cfg.DeviceCAFile, "device-ca", "", "CA certificates that issue device certificates, PEM")
	fs.StringVar(&cfg.OperatorKeysFile, "operator-keys", "", "operator API keys (hashed) and roles, JSON")
	fs.StringVar(&cfg.DeviceIssuerCertFile, "device-issuer-cert", "", "CA or intermediate (with its chain) that signs enrolled and renewed device certificates, PEM (default: none, so no enrollment or renewal; development PKI: its CA)")
	fs.StringVar(&cfg.DeviceIssuerKeyFile, "device-issuer-key", "", "key of --device-issuer-cert, PEM")
	fs.StringVar(&cfg.ManufacturerCAFile, "manufacturer-ca", "", "CAs of factory certificates that may enroll without a token, PEM (default: token enrollment only)")
	fs.StringVar(&cfg.OperatorCAFile, "operator-ca", "", "CA of operator client certificates, PEM (default: API keys only; development PKI: its operator CA)")
	fs.DurationVar(&cfg.Credentials.DeviceCertTTL, "device-cert-ttl", cfg.Credentials.DeviceCertTTL, "lifetime of device certificates issued at enrollment and renewal")
	fs.DurationVar(&cfg.Credentials.EnrollmentTTL, "enrollment-ttl", cfg.Credentials.EnrollmentTTL, "how long a one-time enrollment token stays good")
	fs.DurationVar(&cfg.Credentials.DownloadTokenTTL, "download-token-ttl", cfg.Credentials.DownloadTokenTTL, "lifetime of a download token (at most the device certificate's remaining life)")
	fs.DurationVar(&cfg.Credentials.DownloadKeyGrace, "download-key-grace", cfg.Credentials.DownloadKeyGrace, "how long a download token key replaced by a rotation (ferryctl token rotate-key) keeps verifying its tokens; at least the token lifetime plus the key refresh")
	fs.StringVar(&cfg.Credentials.DownloadURL, "download-url", cfg.Credentials.DownloadURL, "base URL of target downloads that download tokens name, as devices reach it (default: https://<api-addr>/tuf/targets)")
	fs.StringVar(&cfg.Repository.URL, "repository-url", cfg.Repository.URL, "blob store of the TUF repository: a directory or a URL such as s3://bucket?region=... (default: <data-dir>/repository)")
	fs.DurationVar(&cfg.Repository.SnapshotExpiry, "snapshot-expiry", cfg.Repository.SnapshotExpiry, "lifetime of each snapshot ferryd signs (re-signed at half)")
	fs.DurationVar(&cfg.Repository.TimestampExpiry, "timestamp-expiry", cfg.Repository.TimestampExpiry, "lifetime of each timestamp ferryd signs (re-signed at half)")
	fs.DurationVar(&cfg.Repository.CheckInterval, "repository-check-interval", cfg.Repository.CheckInterval, "how often ferryd checks whether another instance sharing the repository changed it (it is also told on each change)")
	fs.DurationVar(&cfg.Rollouts.LeaseTTL, "rollout-lease-ttl", cfg.Rollouts.LeaseTTL, "lease of the active rollout controller: after a crash, the longest rollouts wait for another instance")
	fs.DurationVar(&cfg.Rollouts.Tick, "rollout-tick", cfg.Rollouts.Tick, "how often the active rollout controller moves rollouts on")
	fs.DurationVar(&cfg.Rollouts.Resync, "rollout-resync", cfg.Rollouts.Resync, "how often every rollout execution is checked against its device")
	fs.DurationVar(&cfg.ShutdownDelay, "shutdown-delay", cfg.ShutdownDelay, "how long a stopping ferryd keeps serving with health answering 503, so probes and load balancers take it out of rotation")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long a graceful stop may take")
	fs.DurationVar(&cfg.Audit.Retention, "audit-retention", cfg.Audit.Retention, "how long audit entries are kept before they are pruned")
	fs.StringVar(&cfg.Audit.SigningKeyFile, "audit-signing-key", cfg.Audit.SigningKeyFile, "PKCS #8 PEM key that signs audit exports (default: <data-dir>/audit/signing.key, created at first start)")
	fs.StringVar(&cfg.Audit.SigningKMS, "audit-signing-kms", cfg.Audit.SigningKMS, "KMS key that signs audit exports instead of the key file: awskms://, azurekms://, gcpkms://, hashivault:// or a sigstore KMS plugin's scheme")
	serveConsole := fs.Bool("console", true, "serve the operator console at / on the API port (docs/console.md)")
	fs.BoolVar(&cfg.AllowUnsignedReports, "allow-unsigned-reports", cfg.AllowUnsignedReports, "record device reports that are not signed (kept as claims, with no attestation)")
	// Request and connection limits (docs/security.md, "Limits").
	fs.Int64Var(&cfg.API.MaxMessageBytes, "api-max-message-bytes", cfg.API.MaxMessageBytes, "largest request message an operator may send on the API port (bundles upload in chunks of at most this)")
	fs.Int64Var(&cfg.API.MaxAnonymousMessageBytes, "api-max-anonymous-message-bytes", cfg.API.MaxAnonymousMessageBytes, "largest request message on the API port's anonymous paths: enrollment, renewal, download tokens, health")
	fs.Int64Var(&cfg.API.MaxInflightBytes, "api-max-inflight-bytes", cfg.API.MaxInflightBytes, "request bytes the API port holds at once over all requests; more are refused UNAVAILABLE")
	fs.IntVar(&cfg.API.MaxHeaderBytes, "api-max-header-bytes", cfg.API.MaxHeaderBytes, "largest request header on the API port")
	fs.IntVar(&cfg.API.MaxConcurrentStreams, "api-max-concurrent-streams", cfg.API.MaxConcurrentStreams, "requests one HTTP/2 connection to the API port may have open at once")
	fs.DurationVar(&cfg.API.HandshakeTimeout, "api-handshake-timeout", cfg.API.HandshakeTimeout, "time a new API connection has for its TLS handshake, HTTP/2 preface and first request's headers")
	fs.DurationVar(&cfg.API.IdleTimeout, "api-idle-timeout", cfg.API.IdleTimeout, "an API connection with no request open for this long is closed")
	fs.IntVar(&cfg.API.MaxConns, "api-max-conns", cfg.API.MaxConns, "connections open on the API port at once (0: a share of the descriptor limit)")
	fs.IntVar(&cfg.API.MaxConnsPerSource, "api-max-conns-per-source", cfg.API.MaxConnsPerSource, "connections open on the API port from one address (0: no cap, e.g. behind a load balancer)")
	fs.DurationVar(&cfg.Device.HandshakeTimeout, "device-handshake-timeout", cfg.Device.HandshakeTimeout, "time a new device connection has for its TLS handshake and HTTP/2 preface")
	fs.DurationVar(&cfg.Device.MaxConnectionIdle, "device-max-connection-idle", cfg.Device.MaxConnectionIdle, "a device connection with no stream for this long is closed")
	fs.IntVar(&cfg.Device.MaxConns, "device-max-conns", cfg.Device.MaxConns, "connections open on the device port at once (0: the descriptor limit less a reserve and the API port's share)")
	fs.IntVar(&cfg.Device.MaxConnsPerSource, "device-max-conns-per-source", cfg.Device.MaxConnsPerSource, "connections open on the device port from one address (0: no cap; raise it for fleets behind carrier-grade NAT)")
	fs.IntVar(&cfg.Device.ReadBufferBytes, "device-read-buffer-bytes", cfg.Device.ReadBufferBytes, "gRPC read buffer of each device connection (0: none, frames are read straight from TLS; memory against throughput, see docs/benchmarks.md)")
	fs.IntVar(&cfg.Device.WriteBufferBytes, "device-write-buffer-bytes", cfg.Device.WriteBufferBytes, "gRPC write buffer of each device connection (0: none, frames are written straight to TLS)")
	fs.BoolVar(&cfg.Device.SharedWriteBuffer, "device-shared-write-buffer", cfg.Device.SharedWriteBuffer, "device connections hand their write buffer back between writes")
	fs.Func("device-stream-workers", "goroutines gRPC keeps to start device stream handlers (0: a new goroutine per stream)", func(v string) error {
		n, err := strconv.ParseUint(v, 10, 32)
		cfg.Device.StreamWorkers = uint32(n)
		return err
	})
	fs.DurationVar(&cfg.Device.ResyncInterval, "device-resync-interval", cfg.Device.ResyncInterval, "how often a stream re-reads its device without a change notice when this instance could not take the device's notices (other streams read on a notice only)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: ferryd [flags]\n       ferryd healthcheck [flags]\n\nFlags (or FERRY_<FLAG> environment variables):\n")
		fs.PrintDefaults()
	}
	if err := setFromEnv(fs); err != nil {
		return err
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if cfg.DevPKI() && (cfg.DeviceIssuerCertFile != "" || cfg.OperatorCAFile != "") {
		// The development PKI brings its own issuer and operator CA.
		return fmt.Errorf("--device-issuer-cert and --operator-ca need --tls-cert, --tls-key, --device-ca and --operator-keys (the development PKI uses its own)")
	}
	log, err := newLogger(*logFormat, *logLevel)
	if err != nil {
		return err
	}
	// The Redis client's own lines (dial retries and the like) go to the
	// debug log; ferryd reports what they mean itself.
	goredis.SetLogger(redisLog{log.With("component", "redis")})

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *serveConsole {
		cfg.Console = console.Handler()
	}
	srv, err := server.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

// healthcheck probes the API port of a running ferryd.
func healthcheck(args []string) error {
	fs := flag.NewFlagSet("ferryd healthcheck", flag.ContinueOnError)
	addr := fs.String("api-addr", server.DefaultConfig().APIAddr, "API port of the ferryd to probe; without a host, loopback [$FERRY_API_ADDR]")
	live := fs.Bool("live", false, "probe liveness ("+server.LivenessPath+") instead of readiness ("+server.ReadinessPath+")")
	timeout := fs.Duration("timeout", 5*time.Second, "how long the probe may take")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: ferryd healthcheck [flags]\n\nGETs %s (or %s) from a running ferryd over HTTPS, with no credential and\nwithout verifying its certificate; exits 0 on 200, else 1.\n\nFlags:\n",
			server.ReadinessPath, server.LivenessPath)
		fs.PrintDefaults()
	}
	if v, ok := os.LookupEnv("FERRY_API_ADDR"); ok { // as ferryd reads it
		*addr = v
	}
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("healthcheck: unexpected arguments: %q", fs.Args())
	}
	path := server.ReadinessPath
	if *live {
		path = server.LivenessPath
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	line, err := server.Probe(ctx, *addr, path)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	fmt.Println(line)
	return nil
}

// setFromEnv applies FERRY_<NAME> variables to the flags; command-line flags
// parsed afterwards win.
func setFromEnv(fs *flag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := "FERRY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		f.Usage += " [$" + name + "]"
		if v, ok := os.LookupEnv(name); ok && err == nil {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", name, e)
			}
		}
	})
	return err
}

// redisLog is the Redis client's logger on slog.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.DebugContext(ctx, strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
