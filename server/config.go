package server

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/ferryhq/ferry/credentials"
)

// Config is ferryd's configuration. DefaultConfig gives every field a safe
// default; flags and environment variables are mapped onto it in cmd/ferryd.
type Config struct {
	// DataDir holds the embedded store and the development PKI.
	DataDir string
	// DeviceAddr is the device port: gRPC, TLS 1.3, client certificate
	// required.
	DeviceAddr string
	// APIAddr is the back-office port: Connect, gRPC health and reflection,
	// plain HTTP health (/healthz, /readyz), Prometheus metrics, over HTTPS.
	APIAddr string
	// RedisURL selects the Redis store: one server (redis://, rediss://), a
	// Redis Cluster (redis+cluster://) or Sentinel (redis+sentinel://); see
	// store/redis.Conn. Empty means the embedded store in DataDir.
	RedisURL string
	// RedisPrefix is put in front of every Redis key.
	RedisPrefix string
	// RedisConnectTimeout is how long New keeps trying to reach Redis
	// before it gives up (a Redis that starts after ferryd is waited for).
	RedisConnectTimeout time.Duration
	// RedisMinReplicas, when positive, makes every acknowledged device and
	// rollout write wait until that many replicas have it (Redis WAIT), for
	// at most RedisMinReplicasTimeout; a write they do not confirm in time
	// fails as unavailable.
	RedisMinReplicas        int
	RedisMinReplicasTimeout time.Duration
	// TrustDomain of device SPIFFE IDs.
	TrustDomain string

	// TLS material. When all are empty, ferryd creates (once) and uses a
	// development PKI under DataDir/pki.
	TLSCertFile      string // serving certificate chain, PEM
	TLSKeyFile       string // its key, PEM (PKCS #8)
	DeviceCAFile     string // CA that issues device certificates, PEM
	OperatorKeysFile string // operator API keys (hashed) and roles, JSON

	// Optional credential material. With the development PKI, the issuer
	// is the development CA and the operator CA is the development one.
	DeviceIssuerCertFile string // CA (or intermediate, with its chain) that signs device certificates, PEM; empty: no enrollment or renewal here
	DeviceIssuerKeyFile  string // its key, PEM (PKCS #8)
	ManufacturerCAFile   string // CAs of factory certificates, PEM; empty: enrollment with a token only
	OperatorCAFile       string // CA of operator client certificates, PEM; empty: operators use API keys only

	// Credentials sets the lifetimes of what the credential broker issues.
	Credentials CredentialsConfig

	// Console, when set, serves the operator console's assets at / on the
	// API port (console.go); cmd/ferryd sets it to the embedded console.
	// Nil: no console, and / is not found.
	Console http.Handler

	// AllowUnsignedReports accepts device reports without a signature. Off
	// by default: a report is evidence only when the device signed it.
	AllowUnsignedReports bool

	// Dev controls the development PKI.
	Dev DevConfig
	// Device holds the device port's limits.
	Device DeviceLimits
	// API holds the back-office port's request and connection limits.
	API APILimits
	// Repository configures the TUF repository.
	Repository RepositoryConfig
	// Rollouts configures the rollout controller.
	Rollouts RolloutsConfig
	// Audit configures the audit trail.
	Audit AuditConfig
	// ShutdownDelay is how long a stopping ferryd keeps serving with
	// /healthz, /readyz and gRPC health answering that it is stopping, so
	// that probes and load balancers take it out of rotation before its
	// ports close.
	ShutdownDelay time.Duration
	// ShutdownTimeout bounds a graceful stop; after it, connections are cut.
	ShutdownTimeout time.Duration
}

// RolloutsConfig configures the rollout controller. Every ferryd runs one;
// the one holding the lease is active.
type RolloutsConfig struct {
	// LeaseTTL is how long the controller's lease lasts without renewal:
	// after a crash, the longest the rollouts wait for another instance.
	LeaseTTL time.Duration
	// Tick is how often the active controller moves rollouts on.
	Tick time.Duration
	// Resync is how often every execution is checked against its device,
	// in case a change notice was lost.
	Resync time.Duration
}

// AuditConfig configures the audit trail (audit_api.go).
type AuditConfig struct {
	// Retention is how long entries are kept; older ones are pruned.
	Retention time.Duration
	// SigningKeyFile is the PKCS #8 PEM key that signs audit exports
	// (ECDSA P-256 or Ed25519); empty means DataDir/audit/signing.key,
	// created at first start.
	SigningKeyFile string
	// SigningKMS, when set, is a KMS key reference (sigstore: awskms://,
	// gcpkms://, hashivault://, or a plugin's scheme) used instead of the
	// file key.
	SigningKMS string
}

// DevConfig controls the development PKI.
type DevConfig struct {
	// Devices are the ids of the development devices that get certificates
	// and are registered in the store.
	Devices []string
	// Hosts the development server certificate is valid for.
	Hosts []string
	// CertTTL is the lifetime of development certificates.
	CertTTL time.Duration
}

// CredentialsConfig sets the credential broker's lifetimes and intervals.
type CredentialsConfig struct {
	// DeviceCertTTL is the lifetime of the device certificates issued at
	// enrollment and renewal.
	DeviceCertTTL time.Duration
	// EnrollmentTTL is how long a one-time enrollment token stays good.
	EnrollmentTTL time.Duration
	// DownloadTokenTTL is the lifetime of a download token (never more than
	// the device certificate's remaining life).
	DownloadTokenTTL time.Duration
	// DownloadKeyGrace is how long a download token key replaced by a
	// rotation keeps verifying the tokens it signed, unless the rotation
	// names another grace. It must cover DownloadTokenTTL plus
	// DownloadKeyRefresh, so that no token in flight breaks.
	DownloadKeyGrace time.Duration
	// DownloadKeyRefresh is how old this instance's copy of the download
	// token keyset may get before it is read again from the store: the
	// longest a rotation made on another instance takes to reach this one
	// (a token naming a key this instance does not know makes it read the
	// keyset at once).
	DownloadKeyRefresh time.Duration
	// RevocationRefresh is how often the cached revocation set is reloaded
	// from the store and revoked devices' streams are closed; it bounds
	// how long a revocation made on another instance takes here.
	RevocationRefresh time.Duration
	// ServingCertCheck is how often, at most, the serving certificate files
	// are checked for a replacement.
	ServingCertCheck time.Duration
	// DownloadURL is the base URL of target downloads named in download
	// tokens' responses; empty means https://<API address>/tuf/targets.
	DownloadURL string
}

// DeviceLimits protect the device port. Each has a safe default.
type DeviceLimits struct {
	// MaxMessageBytes is the largest message a device may send.
	MaxMessageBytes int
	// MaxConcurrentStreams per connection; a device needs one.
	MaxConcurrentStreams uint32
	// KeepaliveMinTime is the shortest keepalive ping interval a device may
	// use; faster pingers are disconnected.
	KeepaliveMinTime time.Duration
	// KeepaliveTime and KeepaliveTimeout: the server pings an idle
	// connection after KeepaliveTime and closes it if no answer comes in
	// KeepaliveTimeout.
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	// HelloTimeout is how long a new stream may take to send Hello.
	HelloTimeout time.Duration
	// MessagesPerSecond and MessageBurst rate-limit each device's stream;
	// a device over the limit has its stream closed (ResourceExhausted).
	MessagesPerSecond float64
	MessageBurst      int
	// PingInterval is how often the server sends Ping on a quiet stream.
	PingInterval time.Duration
	// ResyncInterval is how often a stream reads its device's desired
	// version without a change notice when this instance could not take
	// the device's notices (its hold failed). Other streams read only on a
	// notice, and all at once when notices may have been lost (a broken
	// subscription to the store, made again).
	ResyncInterval time.Duration
	// SeenFlush is how often, at most, the last-seen times of the devices'
	// answers to pings are written to the store, in one batch per
	// instance; a device's last-seen time may be this much older than its
	// last answer.
	SeenFlush time.Duration

	// HandshakeTimeout bounds a new connection's TLS handshake and HTTP/2
	// preface; a connection that has not finished both by then is closed.
	HandshakeTimeout time.Duration
	// MaxConnectionIdle closes a connection that has had no stream for
	// this long (a device holds one stream all the time).
	MaxConnectionIdle time.Duration
	// MaxHeaderBytes is the largest header list a device may send.
	MaxHeaderBytes int
	// MaxConns caps the connections open on the device port; 0 derives
	// it from the process's descriptor limit (see connectionCaps).
	MaxConns int
	// MaxConnsPerSource caps the connections open from one address; 0
	// means no cap (for a device port behind a load balancer, where every
	// connection comes from its address).
	MaxConnsPerSource int

	// Memory against throughput, per device connection (docs/benchmarks.md,
	// "Stream density"). ReadBufferBytes and WriteBufferBytes are gRPC's
	// per-connection read and write buffers: 0 (the default) reads and
	// writes frames straight on the TLS connection, which costs a system
	// call more per message and saves about 64 KiB per idle connection
	// (gRPC's own default is 32 KiB each). SharedWriteBuffer (default on)
	// lets a connection hand its write buffer back between writes.
	ReadBufferBytes   int
	WriteBufferBytes  int
	SharedWriteBuffer bool
	// StreamWorkers is gRPC's pool of goroutines that start stream
	// handlers (grpc.NumStreamWorkers); 0, the default, starts a goroutine
	// per stream.
	StreamWorkers uint32
}

// APILimits protect the back-office port. Each has a safe default.
type APILimits struct {
	// MaxMessageBytes is the largest request message an operator may send
	// (a bundle is uploaded in chunks of at most this size).
	MaxMessageBytes int64
	// MaxAnonymousMessageBytes is the largest request message on the paths
	// served without an operator credential: enrollment, certificate
	// renewal, download tokens, health.
	MaxAnonymousMessageBytes int64
	// MaxInflightBytes is the request bytes held at once over all requests;
	// a body that would exceed it is refused (UNAVAILABLE).
	MaxInflightBytes int64
	// MaxHeaderBytes is the largest request header a client may send.
	MaxHeaderBytes int
	// MaxConcurrentStreams is the number of requests one HTTP/2 connection
	// may have open at once.
	MaxConcurrentStreams int
	// HandshakeTimeout bounds the time from a connection's accept to its
	// first request's headers: the TLS handshake, the HTTP/2 preface and
	// the headers. It also bounds every later HTTP/1.1 request's headers.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection with no request open for this long.
	IdleTimeout time.Duration
	// MaxConns caps the connections open on the API port; 0 derives it
	// from the process's descriptor limit (see connectionCaps).
	MaxConns int
	// MaxConnsPerSource caps the connections open from one address; 0
	// means no cap (behind a load balancer).
	MaxConnsPerSource int
}

// DefaultConfig returns the configuration ferryd runs with when given no
// flags.
func DefaultConfig() Config {
	return Config{
		DataDir:     "ferry-data",
		DeviceAddr:  "localhost:8444",
		APIAddr:     "localhost:8443",
		RedisPrefix: "ferry:",
		TrustDomain: "ferry.local",
		// Long enough for a Redis started at the same time (compose,
		// systemd) to come up.
		RedisConnectTimeout:     30 * time.Second,
		RedisMinReplicasTimeout: time.Second,
		Audit:                   AuditConfig{Retention: 400 * 24 * time.Hour},
		Dev: DevConfig{
			Devices: []string{"dev-1", "dev-2", "dev-3"},
			Hosts:   []string{"localhost", "127.0.0.1", "::1"},
			CertTTL: 30 * 24 * time.Hour,
		},
		Device: DeviceLimits{
			MaxMessageBytes:      256 << 10,
			MaxConcurrentStreams: 4,
			KeepaliveMinTime:     20 * time.Second,
			KeepaliveTime:        2 * time.Minute,
			KeepaliveTimeout:     20 * time.Second,
			HelloTimeout:         10 * time.Second,
			MessagesPerSecond:    10,
			MessageBurst:         50,
			PingInterval:         time.Minute,
			ResyncInterval:       30 * time.Second,
			SeenFlush:            time.Second,
			HandshakeTimeout:     5 * time.Second,
			MaxConnectionIdle:    5 * time.Minute,
			MaxHeaderBytes:       16 << 10,
			MaxConnsPerSource:    256,
			SharedWriteBuffer:    true,
		},
		API: APILimits{
			MaxMessageBytes:          4 << 20,
			MaxAnonymousMessageBytes: 64 << 10,
			MaxInflightBytes:         256 << 20,
			MaxHeaderBytes:           32 << 10,
			MaxConcurrentStreams:     100,
			HandshakeTimeout:         5 * time.Second,
			IdleTimeout:              30 * time.Second,
			MaxConnsPerSource:        128,
		},
		Repository: RepositoryConfig{
			SnapshotExpiry:  7 * 24 * time.Hour,
			TimestampExpiry: 24 * time.Hour,
			ResignInterval:  10 * time.Minute,
			CheckInterval:   2 * time.Second,
			MaxBlobBytes:    4 << 30,
		},
		Credentials: CredentialsConfig{
			DeviceCertTTL:      24 * time.Hour,
			EnrollmentTTL:      7 * 24 * time.Hour,
			DownloadTokenTTL:   5 * time.Minute,
			DownloadKeyGrace:   10 * time.Minute, // the token lifetime plus five minutes
			DownloadKeyRefresh: 5 * time.Second,
			RevocationRefresh:  5 * time.Second,
			ServingCertCheck:   5 * time.Second,
		},
		Rollouts: RolloutsConfig{
			LeaseTTL: 15 * time.Second,
			Tick:     time.Second,
			Resync:   30 * time.Second,
		},
		ShutdownDelay:   time.Second,
		ShutdownTimeout: 3 * time.Second,
	}
}

// RepositoryConfig configures the TUF repository.
type RepositoryConfig struct {
	// URL of the blob store that holds metadata and bundles: empty for
	// <DataDir>/repository, a local path, or a gocloud.dev URL such as
	// s3://bucket?region=eu-west-1 (S3-compatible stores add
	// &endpoint=https://host&use_path_style=true).
	URL string
	// SnapshotExpiry and TimestampExpiry are the lifetimes of what ferryd
	// signs; each is re-signed when less than half of it is left.
	SnapshotExpiry  time.Duration
	TimestampExpiry time.Duration
	// ResignInterval is how often ferryd checks for metadata to re-sign.
	ResignInterval time.Duration
	// CheckInterval is how often ferryd checks whether another instance
	// sharing the repository changed it (besides the notice on each
	// change, and the check on each timestamp request).
	CheckInterval time.Duration
	// MaxBlobBytes is the largest bundle accepted.
	MaxBlobBytes int64
	// Clock is the repository's clock: the time it signs with and checks
	// expiry against. Nil means time.Now; tests move it.
	Clock func() time.Time
}

// DevPKI reports whether ferryd uses the development PKI.
func (c Config) DevPKI() bool {
	return c.TLSCertFile == "" && c.TLSKeyFile == "" && c.DeviceCAFile == "" && c.OperatorKeysFile == ""
}

// Validate checks the configuration and says what is wrong.
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Audit.Retention >= 24*time.Hour, "audit retention %v: want at least a day (--audit-retention)", c.Audit.Retention)
	for name, addr := range map[string]string{"device address": c.DeviceAddr, "API address": c.APIAddr} {
		_, _, err := net.SplitHostPort(addr)
		check(err == nil, "%s %q: want host:port", name, addr)
	}
	check(c.DataDir != "", "data directory is required")
	check(credentials.ValidTrustDomain(c.TrustDomain),
		"trust domain %q: want lowercase letters, digits, '.', '_' and '-'", c.TrustDomain)
	if !c.DevPKI() {
		check(c.TLSCertFile != "" && c.TLSKeyFile != "" && c.DeviceCAFile != "" && c.OperatorKeysFile != "",
			"TLS certificate, TLS key, device CA and operator keys files go together: give all four, or none for the development PKI")
	} else {
		check(c.Dev.CertTTL >= time.Hour, "development certificate lifetime %v is under an hour", c.Dev.CertTTL)
		for _, id := range c.Dev.Devices {
			check(credentials.ValidDeviceID(id), "development device id %q is malformed", id)
		}
	}
	d := c.Device
	check(d.MaxMessageBytes >= 1<<10, "device max message size %d is under 1 KiB", d.MaxMessageBytes)
	check(d.MaxConcurrentStreams >= 1, "device max concurrent streams must be at least 1")
	check(d.KeepaliveMinTime > 0 && d.KeepaliveTime >= d.KeepaliveMinTime && d.KeepaliveTimeout > 0,
		"device keepalive: want 0 < min time <= time, and a positive timeout")
	check(d.HelloTimeout > 0, "device hello timeout must be positive")
	check(d.MessagesPerSecond > 0 && d.MessageBurst >= 1, "device rate limit must be positive with a burst of at least 1")
	check(d.PingInterval > 0, "device ping interval must be positive")
	check(d.ResyncInterval > 0, "device resync interval must be positive")
	check(d.ReadBufferBytes >= 0 && d.WriteBufferBytes >= 0, "device read and write buffer sizes must not be negative")
	check(d.SeenFlush > 0, "device last-seen flush interval must be positive")
	check(d.HandshakeTimeout > 0 && d.MaxConnectionIdle > 0, "device handshake timeout and max connection idle must be positive")
	check(d.MaxHeaderBytes >= 1<<10, "device max header size %d is under 1 KiB", d.MaxHeaderBytes)
	check(d.MaxConns >= 0 && d.MaxConnsPerSource >= 0, "device connection caps must not be negative (0: derived, or no per-source cap)")
	a := c.API
	check(a.MaxMessageBytes >= 64<<10 && a.MaxAnonymousMessageBytes >= 4<<10,
		"API max message sizes %d and %d (anonymous): want at least 64 KiB and 4 KiB", a.MaxMessageBytes, a.MaxAnonymousMessageBytes)
	check(a.MaxInflightBytes >= a.MaxMessageBytes+envelopeSlack, "API in-flight bytes %d are under one message of %d", a.MaxInflightBytes, a.MaxMessageBytes)
	check(a.MaxHeaderBytes >= 4<<10, "API max header size %d is under 4 KiB", a.MaxHeaderBytes)
	check(a.MaxConcurrentStreams >= 1, "API max concurrent streams must be at least 1")
	check(a.HandshakeTimeout > 0 && a.IdleTimeout > 0, "API handshake and idle timeouts must be positive")
	check(a.MaxConns >= 0 && a.MaxConnsPerSource >= 0, "API connection caps must not be negative (0: derived, or no per-source cap)")
	check(c.ShutdownTimeout > 0, "shutdown timeout must be positive")
	check(c.ShutdownDelay >= 0, "shutdown delay must not be negative")
	check(c.RedisURL == "" || c.RedisConnectTimeout > 0, "Redis connect timeout must be positive")
	check(c.RedisMinReplicas >= 0, "Redis min replicas must not be negative")
	check(c.RedisMinReplicas == 0 || c.RedisURL != "", "Redis min replicas need the Redis store (--redis-url)")
	check(c.RedisMinReplicas == 0 || c.RedisMinReplicasTimeout > 0, "Redis min replicas timeout must be positive")
	cr := c.Credentials
	check(cr.DeviceCertTTL >= 10*time.Minute, "device certificate lifetime %v is under 10 minutes", cr.DeviceCertTTL)
	check(cr.EnrollmentTTL >= time.Minute, "enrollment token lifetime %v is under a minute", cr.EnrollmentTTL)
	check(cr.DownloadTokenTTL >= 10*time.Second && cr.DownloadTokenTTL <= time.Hour, "download token lifetime %v: want 10s to 1h", cr.DownloadTokenTTL)
	check(cr.DownloadKeyRefresh > 0 && cr.DownloadKeyRefresh <= time.Minute, "download key refresh %v: want more than 0 and at most a minute", cr.DownloadKeyRefresh)
	check(cr.DownloadKeyGrace >= cr.DownloadTokenTTL+cr.DownloadKeyRefresh,
		"download key grace %v is under the download token lifetime %v plus the key refresh %v: tokens in flight would be refused after a rotation; set it to at least %v",
		cr.DownloadKeyGrace, cr.DownloadTokenTTL, cr.DownloadKeyRefresh, cr.DownloadTokenTTL+cr.DownloadKeyRefresh)
	check(cr.RevocationRefresh > 0 && cr.ServingCertCheck > 0, "revocation refresh and serving certificate check intervals must be positive")
	check((c.DeviceIssuerCertFile == "") == (c.DeviceIssuerKeyFile == ""), "device issuer certificate and key go together")
	r := c.Repository
	check(r.SnapshotExpiry >= time.Minute && r.TimestampExpiry >= time.Minute && r.ResignInterval > 0 && r.ResignInterval < r.TimestampExpiry/2,
		"repository: want snapshot and timestamp lifetimes of at least a minute, and a re-sign interval under half the timestamp lifetime")
	check(r.MaxBlobBytes > 0, "repository: maximum bundle size must be positive")
	check(r.CheckInterval > 0, "repository: the check interval must be positive")
	ro := c.Rollouts
	check(ro.Tick > 0 && ro.Resync >= ro.Tick && ro.LeaseTTL >= 3*ro.Tick,
		"rollouts: want a positive tick, a resync interval of at least a tick, and a lease of at least three ticks")
	return errors.Join(errs...)
}
