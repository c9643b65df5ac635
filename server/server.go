// Package server is ferryd's transport and lifecycle: the device port (gRPC,
// mutual TLS 1.3), the back-office port (Connect handlers on net/http, gRPC
// health and reflection, Prometheus metrics), proto <-> domain conversion,
// authentication, the one mapping of domain errors to status codes, and a
// graceful stop that is bounded in time.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/grpc"
	grpccreds "google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/ferryhq/ferry/audit"
	"github.com/ferryhq/ferry/credentials"
	credentialsv1 "github.com/ferryhq/ferry/proto/ferry/credentials/v1"
	"github.com/ferryhq/ferry/proto/ferry/credentials/v1/credentialsv1connect"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	"github.com/ferryhq/ferry/proto/ferry/fleet/v1/fleetv1connect"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/replica"
	"github.com/ferryhq/ferry/rollout"
	"github.com/ferryhq/ferry/store"
)

// Server is a running ferryd. New opens its store and listeners; Run
// serves until its context ends, then stops gracefully.
type Server struct {
	cfg      Config
	log      *slog.Logger
	devices  store.Devices
	replica  *replica.Service
	metrics  *metrics
	conns    *connMetrics // limits_conn.go
	sessions *sessions
	health   *grpchealth.StaticChecker
	grpc     *grpc.Server
	http     *http.Server
	deviceLn net.Listener
	apiLn    net.Listener
	dev      *credentials.DevFiles
	repo     *repository
	creds    *credentialsState // credentials.go
	rollouts *rollout.Service
	control  *rollout.Controller
	// stopping is set when a graceful stop begins: liveness and readiness
	// answer 503 from then on.
	stopping atomic.Bool
	// storeCheck is the store's reachability, for readiness (health.go).
	storeCheck *storeCheck
	// tracing is OpenTelemetry tracing, a no-op unless configured
	// (tracing.go).
	tracing *tracing
	// audit records the audit trail; auditKey signs its exports (audit.go).
	audit    *audit.Recorder
	auditLog store.Audit
	auditKey signature.Signer
}

// apiServiceNames are the services served on the API port: what reflection
// lists there. The device service is served on the device port only.
var apiServiceNames = []string{
	fleetv1connect.FleetServiceName,
	fleetv1connect.RolloutServiceName,
	fleetv1connect.AuditServiceName,
	fleetv1connect.OperatorServiceName,
	repositoryv1connect.RepositoryServiceName,
	credentialsv1connect.CredentialServiceName,
	credentialsv1connect.DownloadKeyServiceName,
}

// servedNames are the services whose health is reported (on the API port,
// for both ports): the device service and the API port's.
var servedNames = append([]string{devicev1.DeviceService_ServiceDesc.ServiceName}, apiServiceNames...)

// New validates cfg, creates the development PKI if it is used, opens the
// store and binds both ports. Close releases all of it if Run is not called.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	tr, err := newTracing(ctx, log)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	log = tr.logger(log)
	s := &Server{cfg: cfg, log: log, metrics: newMetrics(), sessions: newSessions(), tracing: tr}
	s.conns = newConnMetrics(s.metrics.registry)
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if cfg.DevPKI() {
		dev, err := credentials.EnsureDev(filepath.Join(cfg.DataDir, "pki"), credentials.DevOptions{
			TrustDomain: cfg.TrustDomain, Hosts: cfg.Dev.Hosts, Devices: cfg.Dev.Devices, CertTTL: cfg.Dev.CertTTL,
		})
		if err != nil {
			return nil, fmt.Errorf("development PKI: %w", err)
		}
		s.dev = &dev
		cfg.TLSCertFile, cfg.TLSKeyFile, cfg.DeviceCAFile, cfg.OperatorKeysFile = dev.ServerCert, dev.ServerKey, dev.CACert, dev.Operators
		cfg.DeviceIssuerCertFile, cfg.DeviceIssuerKeyFile, cfg.OperatorCAFile = dev.CACert, dev.CAKey, dev.OperatorCACert
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	deviceCAs, err := credentials.ReadCertFile(cfg.DeviceCAFile)
	if err != nil {
		return nil, fmt.Errorf("device CA: %w", err)
	}
	operators, err := credentials.LoadOperatorKeys(cfg.OperatorKeysFile)
	if err != nil {
		return nil, fmt.Errorf("operator keys: %w", err)
	}

	if s.devices, err = openStore(ctx, cfg, log); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if s.repo, err = openRepository(ctx, cfg, log, s.devices); err != nil {
		return nil, fmt.Errorf("repository: %w", err)
	}
	s.metrics.registry.MustRegister(newTUFExpiryCollector(s.repo.repo))
	changes, _ := s.devices.(store.Changes)
	s.replica = replica.New(replica.Config{Devices: s.tracing.devices(cfg, timedDevices{s.devices, s.metrics.store}), Changes: changes, Logger: log, SeenFlush: cfg.Device.SeenFlush})
	rep := s.replica
	if s.dev != nil {
		for _, id := range cfg.Dev.Devices {
			if _, err := rep.Register(ctx, id, map[string]string{"group": "dev"}); err != nil {
				return nil, fmt.Errorf("register development device %s: %w", id, err)
			}
		}
	}

	if al, ok := s.devices.(store.Audit); ok {
		s.auditLog = al
		s.audit = audit.NewRecorder(al, time.Now, log)
		if s.auditKey, err = auditSigner(ctx, cfg, log); err != nil {
			return nil, err
		}
	}

	if err := s.newRollouts(log); err != nil {
		return nil, err
	}

	credStore, ok := s.devices.(store.Credentials)
	if !ok {
		return nil, errors.New("store: the backend does not keep credentials")
	}
	if s.creds, err = newCredentials(ctx, cfg, log, timedCredentials{credStore, s.metrics.store}, rep, s.sessions); err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}

	devicePool := certPool(deviceCAs)
	s.grpc = s.newDeviceServer(cert, devicePool, rep)
	s.http = s.newAPIServer(cert, devicePool, operators, rep)
	nofile, err := descriptorLimit()
	if err != nil {
		return nil, fmt.Errorf("descriptor limit: %w", err)
	}
	deviceCap, apiCap, err := connectionCaps(cfg.Device.MaxConns, cfg.API.MaxConns, nofile)
	if err != nil {
		return nil, err
	}
	s.cfg.Device.MaxConns, s.cfg.API.MaxConns = deviceCap, apiCap
	deviceLn, err := listen("device port", cfg.DeviceAddr, "--device-addr")
	if err != nil {
		return nil, err
	}
	// The device port's handshake deadline is gRPC's connection timeout.
	s.deviceLn = limitListen(deviceLn, connLimits{port: "device", total: deviceCap, perSource: cfg.Device.MaxConnsPerSource}, s.conns)
	apiLn, err := listen("API port", cfg.APIAddr, "--api-addr")
	if err != nil {
		return nil, err
	}
	s.apiLn = limitListen(apiLn, connLimits{
		port: "api", total: apiCap, perSource: cfg.API.MaxConnsPerSource, firstRequest: cfg.API.HandshakeTimeout,
	}, s.conns)
	log.Debug("connection caps", "device_port", deviceCap, "api_port", apiCap, "descriptor_limit", nofile)
	s.creds.listening(s.apiLn.Addr())
	return s, nil
}

// listen binds addr; a port in use gets a hint at what to do.
func listen(what, addr, flag string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%s: %w: another process (another ferryd?) listens on %s; stop it, or choose another address with %s", what, err, addr, flag)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return l, nil
}

// certPool returns the device CA certificates as a pool.
func certPool(cas []*x509.Certificate) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	return pool
}

func (s *Server) newDeviceServer(cert tls.Certificate, pool *x509.CertPool, rep *replica.Service) *grpc.Server {
	tlsConfig := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		GetCertificate:   s.creds.serving.GetCertificate, // replaceable without a restart
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        pool,
		VerifyConnection: refuseRevoked(s.cfg.TrustDomain, s.creds.revoked),
	}
	l := s.cfg.Device
	g := grpc.NewServer(
		grpc.Creds(grpccreds.NewTLS(tlsConfig)),
		grpc.MaxRecvMsgSize(l.MaxMessageBytes),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(uint32(l.MaxHeaderBytes)),
		// The TLS handshake and the HTTP/2 preface must be done in this
		// time; connection caps are on the listener (limits_conn.go).
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.KeepaliveMinTime, PermitWithoutStream: false}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: l.KeepaliveTime, Timeout: l.KeepaliveTimeout, MaxConnectionIdle: l.MaxConnectionIdle}),
		grpc.ChainStreamInterceptor(s.metrics.grpc.StreamServerInterceptor(), deviceIdentity(s.cfg.TrustDomain, s.creds.revoked)),
		grpc.ChainUnaryInterceptor(s.metrics.grpc.UnaryServerInterceptor(), deviceIdentityUnary(s.cfg.TrustDomain, s.creds.revoked), auditRenewals(s.audit)),
		// Memory per connection (docs/benchmarks.md, "Stream density").
		grpc.ReadBufferSize(l.ReadBufferBytes),
		grpc.WriteBufferSize(l.WriteBufferBytes),
		grpc.SharedWriteBuffer(l.SharedWriteBuffer),
		grpc.NumStreamWorkers(l.StreamWorkers),
	)
	devicev1.RegisterDeviceServiceServer(g, &deviceService{
		replica: rep, limits: l, log: s.log, metrics: s.metrics, sessions: s.sessions,
		roots: pool, trustDomain: s.cfg.TrustDomain, requireSigned: !s.cfg.AllowUnsignedReports, now: time.Now,
		revoked: s.creds.revoked, tracer: s.tracing.deviceTracer(),
	})
	credentialsv1.RegisterCredentialServiceServer(g, &credentialDevice{creds: s.creds, metrics: s.metrics})
	s.metrics.grpc.InitializeMetrics(g) // every method's series from zero
	return g
}

func (s *Server) newAPIServer(cert tls.Certificate, devicePool *x509.CertPool, auth Authenticator, rep *replica.Service) *http.Server {
	l := s.cfg.API
	// Operator calls are authenticated twice: by the guard before their
	// body is read (limits_http.go), and by the interceptor.
	// Tracing comes first, so that refused calls are traced too; then the
	// request metrics, which count refused calls too; then the audit
	// trail, which records what operators (and enrolling devices) do.
	traced := slices.Clip(s.tracing.interceptors())
	handlerOptions := func(opts ...connect.HandlerOption) connect.HandlerOption {
		return connect.WithHandlerOptions(append(traced, opts...)...) // traced is clipped: append copies
	}
	audited := auditInterceptor{rec: s.audit, trustDomain: s.cfg.TrustDomain}
	guarded := handlerOptions(
		connect.WithInterceptors(s.metrics.api, audited, operatorAuth{auth: auth, certs: s.creds.operatorCerts}),
		connect.WithReadMaxBytes(int(l.MaxMessageBytes)),
	)
	anonymous := handlerOptions(
		connect.WithInterceptors(s.metrics.api),
		connect.WithReadMaxBytes(int(l.MaxAnonymousMessageBytes)),
	)
	enrolling := handlerOptions(
		connect.WithInterceptors(s.metrics.api, audited),
		connect.WithReadMaxBytes(int(l.MaxAnonymousMessageBytes)),
	)
	mux := http.NewServeMux()
	mux.Handle(fleetv1connect.NewFleetServiceHandler(&fleetService{
		replica: rep, repo: s.repo.repo, log: s.log, creds: s.creds, deviceRoots: devicePool, trustDomain: s.cfg.TrustDomain,
	}, guarded))
	mux.Handle(fleetv1connect.NewRolloutServiceHandler(&rolloutService{rollouts: s.rollouts, replica: rep, repo: s.repo.repo, log: s.log}, guarded))
	mux.Handle(repositoryv1connect.NewRepositoryServiceHandler(&repositoryService{repo: s.repo.repo, log: s.log}, guarded))
	mux.Handle(credentialsv1connect.NewDownloadKeyServiceHandler(&downloadKeyService{creds: s.creds}, guarded))
	// TUF metadata and targets: operators and devices (see tufhttp.go).
	mux.Handle("/tuf/", s.tracing.httpHandler(&tufHandler{repo: s.repo.repo, authz: tokenDownloadAuthorizer{creds: s.creds, auth: auth, repo: s.repo.repo}, log: s.log, metrics: s.metrics}))
	// Devices authenticate to CredentialService themselves (enrollment
	// token or certificate), not with operator credentials.
	mux.Handle(credentialsv1connect.NewCredentialServiceHandler(&credentialAPI{creds: s.creds, metrics: s.metrics}, enrolling))
	mux.Handle(fleetv1connect.NewOperatorServiceHandler(operatorService{}, guarded))
	mux.Handle(fleetv1connect.NewAuditServiceHandler(&auditService{log: s.auditLog, devices: s.devices, signer: s.auditKey, logger: s.log}, guarded))

	// Health is anonymous: gRPC health, and plain HTTP GETs (health.go).
	s.health = grpchealth.NewStaticChecker(servedNames...)
	mux.Handle(grpchealth.NewHandler(s.health, anonymous))
	s.healthHandlers(mux)
	reflector := grpcreflect.NewStaticReflector(append(apiServiceNames, grpchealth.HealthV1ServiceName)...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector, guarded))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, guarded))
	mux.Handle("/metrics", requireOperator(auth, s.creds.operatorCerts, credentials.RoleViewer,
		promhttp.HandlerFor(s.metrics.registry, promhttp.HandlerOpts{})))

	// The console, public static assets that call the API above
	// (console.go).
	if s.cfg.Console != nil {
		mux.Handle("/", consoleHandler(s.cfg.Console))
	}

	guard := newAPIGuard(l, auth, s.creds.operatorCerts, s.conns)
	guard.denied = s.auditDenied
	return &http.Server{
		Handler: withTLSState(securityHeaders(guard.wrap(mux), s.conns.requestsRefused)),
		// The TLS handshake's deadline is the header timeout; the
		// listener's first-request deadline bounds the HTTP/2 preface.
		ReadHeaderTimeout: l.HandshakeTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: l.MaxConcurrentStreams},
		ConnContext:       rememberConn,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: s.creds.serving.GetCertificate, // replaceable without a restart
			NextProtos:     []string{"h2", "http/1.1"},
			// Devices present their certificate to download bundles,
			// operators may present an operator certificate, and devices
			// may enroll with a factory certificate.
			ClientAuth: tls.VerifyClientCertIfGiven,
			ClientCAs:  s.creds.apiClientCAs,
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// Config returns the configuration the server runs with.
func (s *Server) Config() Config { return s.cfg }

// DeviceAddr returns the address the device port listens on.
func (s *Server) DeviceAddr() string { return s.deviceLn.Addr().String() }

// APIAddr returns the address the back-office port listens on.
func (s *Server) APIAddr() string { return s.apiLn.Addr().String() }

// DevFiles returns the development PKI's paths, if ferryd uses it.
func (s *Server) DevFiles() (credentials.DevFiles, bool) {
	if s.dev == nil {
		return credentials.DevFiles{}, false
	}
	return *s.dev, true
}

// Run serves both ports until ctx ends, then stops gracefully: health turns
// NOT_SERVING, device streams are told to close, in-flight calls get
// ShutdownTimeout to finish, and then connections are cut.
func (s *Server) Run(ctx context.Context) error {
	backend := "embedded (" + filepath.Join(s.cfg.DataDir, "ferry.db") + ")"
	if s.cfg.RedisURL != "" {
		backend = "redis"
	}
	s.log.Info("ferryd listening", "device_port", s.DeviceAddr(), "api_port", "https://"+s.APIAddr(), "store", backend)
	if dev, ok := s.DevFiles(); ok {
		s.log.Info("development credentials", "ca", dev.CACert, "operator_token", dev.OperatorToken, "device_certificates", dev.DevicesDir)
		if s.cfg.Console != nil {
			// Development mode only: the key is the dev operator's, made for
			// this data directory, and signing in is the first thing to do.
			if key, err := os.ReadFile(dev.OperatorToken); err == nil {
				s.log.Info("operator console", "url", "https://"+s.APIAddr()+"/", "operator_key", strings.TrimSpace(string(key)))
			}
		}
	}

	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	var background sync.WaitGroup
	background.Go(func() { s.replica.Run(bgCtx) })
	background.Go(func() { s.creds.watchRevocations(bgCtx) })
	background.Go(func() { s.repo.run(bgCtx) })
	background.Go(func() { s.control.Run(bgCtx) })
	background.Go(func() { s.runStoreCheck(bgCtx) })
	background.Go(func() { s.runAuditPrune(bgCtx) })

	errc := make(chan error, 2)
	go func() { errc <- s.grpc.Serve(s.deviceLn) }()
	go func() { errc <- s.http.ServeTLS(s.apiLn, "", "") }()

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
		serveErr = fmt.Errorf("serve: %w", serveErr)
	}
	s.shutdown()
	stopBackground()
	background.Wait()
	if err := s.repo.close(); err != nil && serveErr == nil {
		serveErr = fmt.Errorf("close repository: %w", err)
	}
	if err := s.devices.Close(); err != nil && serveErr == nil {
		serveErr = fmt.Errorf("close store: %w", err)
	}
	if s.cfg.RedisURL == "" {
		removePID(s.cfg.DataDir)
	}
	if err := s.flushTraces(); err != nil && serveErr == nil {
		serveErr = err
	}
	return serveErr
}

// flushTraces exports the spans still buffered and stops the exporter,
// waiting at most ShutdownTimeout.
func (s *Server) flushTraces() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	if err := s.tracing.shutdown(ctx); err != nil {
		return fmt.Errorf("flush traces: %w", err)
	}
	return nil
}

func (s *Server) shutdown() {
	start := time.Now()
	s.log.Info("shutting down", "open_streams", s.sessions.count(), "delay", s.cfg.ShutdownDelay)
	s.stopping.Store(true)
	s.health.SetStatus("", grpchealth.StatusNotServing)
	for _, name := range servedNames {
		s.health.SetStatus(name, grpchealth.StatusNotServing)
	}
	// Keep serving, with health saying so, while probes and load
	// balancers notice.
	time.Sleep(s.cfg.ShutdownDelay)
	s.replica.Leave()
	s.sessions.closeAll()

	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			s.grpc.Stop()
		}
	})
	wg.Go(func() {
		if err := s.http.Shutdown(ctx); err != nil {
			s.http.Close()
		}
	})
	wg.Wait()
	s.log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
}

// newRollouts sets up the rollout service and this instance's controller.
func (s *Server) newRollouts(log *slog.Logger) error {
	ro, ok1 := s.devices.(store.Rollouts)
	leases, ok2 := s.devices.(store.Leases)
	if !ok1 || !ok2 {
		return errors.New("store: the backend does not keep rollouts")
	}
	t := timedRollouts{ro: ro, leases: leases, h: s.metrics.store} // store_metrics.go
	ro, leases = t, t
	host, _ := os.Hostname()
	nonce := make([]byte, 4)
	rand.Read(nonce)
	holder := fmt.Sprintf("%s/%d/%x", host, os.Getpid(), nonce)
	ro = s.tracing.rollouts(s.cfg, ro)
	var ticks rollout.TickTracer
	if s.tracing.enabled {
		ticks = tickTracer{tracer: s.tracing.tracer}
	}
	s.rollouts = rollout.New(rollout.Config{Rollouts: ro, Logger: log})
	s.control = rollout.NewController(rollout.ControllerConfig{
		Rollouts: ro, Leases: leases, Replica: s.replica, Holder: holder, Logger: log, Ticks: ticks,
		LeaseTTL: s.cfg.Rollouts.LeaseTTL, Tick: s.cfg.Rollouts.Tick, Resync: s.cfg.Rollouts.Resync,
		SilentAfter: 3 * s.cfg.Device.PingInterval, // a device answers every ping
		Observe:     s.metrics.rolloutEvent,
	})
	s.metrics.registry.MustRegister(newRolloutCollector(ro, log))
	s.metrics.registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "ferry_rollout_controller_leading", Help: "1 when this instance's rollout controller holds the lease, else 0.",
	}, func() float64 {
		if s.control.Leading() {
			return 1
		}
		return 0
	}))
	return nil
}

// LeadsRollouts reports whether this instance's rollout controller is the
// active one.
func (s *Server) LeadsRollouts() bool { return s.control.Leading() }

// Close releases what New opened, for a Server that will not Run.
func (s *Server) Close() error {
	var errs []error
	for _, l := range []net.Listener{s.deviceLn, s.apiLn} {
		if l != nil {
			errs = append(errs, l.Close())
		}
	}
	if s.devices != nil {
		errs = append(errs, s.devices.Close())
		if s.cfg.RedisURL == "" {
			removePID(s.cfg.DataDir)
		}
	}
	errs = append(errs, s.repo.close())
	if s.tracing != nil {
		errs = append(errs, s.flushTraces())
	}
	return errors.Join(errs...)
}
