// Package agent is Ferry's device-side library: it keeps a device's stream
// to ferryd alive, carries out each desired state it receives (download
// through the TUF repository, verify, install, reboot, health check,
// confirm or roll back, apply configuration) and reports every job's end
// with a signed statement.
//
// The package is free of protocol code: it talks to ferryd through the
// Link interface, which agent/transport implements over gRPC and Connect.
// Device makers plug in their own Installer, HealthChecker, Rebooter and
// ConfigApplier, or use the built-in ones (an exec hook and an A/B slot
// installer).
//
// An Agent is not safe for concurrent use: one goroutine calls Run.
package agent

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"strconv"
	"time"
)

// Step is where a job is.
type Step int

// The steps of a job, in order.
const (
	StepNone Step = iota
	StepDownloading
	StepVerifying
	StepInstalling
	StepRebooting
	StepConfirming
	// StepAwaitingConsent: waiting for consent on the device or for the
	// device's maintenance window (consent.go).
	StepAwaitingConsent
)

var stepNames = [...]string{"", "DOWNLOADING", "VERIFYING", "INSTALLING", "REBOOTING", "CONFIRMING", "AWAITING_CONSENT"}

func (s Step) String() string {
	if s < 0 || int(s) >= len(stepNames) {
		return "UNKNOWN"
	}
	return stepNames[s]
}

// Status is how a job ended.
type Status int

// The final statuses a device reports.
const (
	StatusSucceeded Status = iota + 1
	StatusFailed
	StatusRolledBack
	StatusRejected
)

var statusNames = [...]string{"", "SUCCEEDED", "FAILED", "ROLLED_BACK", "REJECTED"}

func (s Status) String() string {
	if s < 0 || int(s) >= len(statusNames) {
		return "UNKNOWN"
	}
	return statusNames[s]
}

// Error codes the agent reports. They are stable: dashboards and rollout
// abort thresholds match on them.
const (
	CodeHardwareIncompatible = "hardware.incompatible"
	CodeDowngradeNotForced   = "downgrade.not_forced"
	CodeDowngradeNotSigned   = "downgrade.not_signed"
	CodeTUFRefresh           = "tuf.refresh_failed"
	CodeTUFUnknownTarget     = "tuf.unknown_target"
	CodeTUFMismatch          = "tuf.desired_mismatch"
	CodeDownloadToken        = "download.token_failed"
	CodeDownloadFailed       = "download.failed"
	CodeLengthMismatch       = "verify.length_mismatch"
	CodeHashMismatch         = "verify.hash_mismatch"
	CodeInstallFailed        = "install.failed"
	CodeInstallInterrupted   = "install.interrupted"
	CodeConfigFailed         = "config.apply_failed"
	CodeRebootFailed         = "reboot.failed"
	CodeHealthFailed         = "health.check_failed"
	CodeNotBooted            = "confirm.not_booted"
	CodeRollbackFailed       = "rollback.failed"
	CodeCommitFailed         = "confirm.commit_failed"
	// Consent codes: the job ended because consent was declined, the
	// deadline to defer passed, or the device has no way to ask.
	CodeConsentDeclined    = "consent.declined"
	CodeConsentExpired     = "consent.expired"
	CodeConsentUnavailable = "consent.unavailable"
	// CodeDeltaFallback is a notice, not a failure: a signed patch from the
	// running bundle exists but could not be used (the base is missing or
	// modified on the device, the patch was refused or failed to download,
	// or its result did not verify), so the job downloads the full bundle.
	// The message says why.
	CodeDeltaFallback = "delta.fallback"
)

// Bundle names a target of the TUF repository.
type Bundle struct {
	TargetPath string `json:"targetPath"`
	Length     uint64 `json:"length"`
	SHA256     string `json:"sha256"`
}

// Desired is a desired document.
type Desired struct {
	// Bundle is nil when the document asks for no software change.
	Bundle *Bundle           `json:"bundle,omitempty"`
	Forced bool              `json:"forced,omitempty"`
	Config map[string]string `json:"config,omitempty"`
	// Consent, when set, makes the agent ask for consent before it
	// installs and/or reboots (consent.go).
	Consent *ConsentPolicy `json:"consent,omitempty"`
}

// Delta is a desired state pushed by ferryd.
type Delta struct {
	JobID          string
	DesiredVersion uint64
	Desired        Desired
}

// State is what the device runs.
type State struct {
	Bundle *Bundle `json:"bundle,omitempty"`
	// Version is the installed bundle's version from its signed TUF
	// metadata ("2.1.0"); the downgrade rule compares it.
	Version string            `json:"version,omitempty"`
	Config  map[string]string `json:"config,omitempty"`
}

func (s State) clone() State {
	c := s
	if s.Bundle != nil {
		b := *s.Bundle
		c.Bundle = &b
	}
	c.Config = maps.Clone(s.Config)
	return c
}

// Result is the end of a job, as reported.
type Result struct {
	JobID          string `json:"jobId"`
	DesiredVersion uint64 `json:"desiredVersion"`
	Status         Status `json:"status"`
	Step           Step   `json:"step,omitempty"`
	ErrorCode      string `json:"errorCode,omitempty"`
	Message        string `json:"message,omitempty"`
	// State is what the device runs after the job.
	State State `json:"state"`
}

// Progress moves a job through its steps.
type Progress struct {
	JobID          string
	DesiredVersion uint64
	Step           Step
	Percent        uint32
	// Download says how the job fetches its bundle and how many bytes it
	// received so far (zero before it knows).
	Download Download
	// Code and Message are a notice that does not end the job, such as
	// CodeDeltaFallback.
	Code, Message string
	// Consent is the answer the agent got when it asked for consent, or
	// why it waits (with StepAwaitingConsent).
	Consent *Consent
}

// DownloadMethod is how a job fetches its bundle.
type DownloadMethod int

// Download methods; the numbers are the protocol's.
const (
	MethodNone  DownloadMethod = iota // not known yet, or configuration only
	MethodFull                        // the full bundle target
	MethodDelta                       // a signed patch from the running bundle
)

var methodNames = [...]string{"", "full", "delta"}

func (m DownloadMethod) String() string {
	if m < 0 || int(m) >= len(methodNames) {
		return "unknown"
	}
	return methodNames[m]
}

// MarshalText and UnmarshalText keep the method by name in the agent's
// state.
func (m DownloadMethod) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *DownloadMethod) UnmarshalText(b []byte) error {
	for i, n := range methodNames {
		if n == string(b) {
			*m = DownloadMethod(i)
			return nil
		}
	}
	return errors.New("unknown download method " + strconv.Quote(string(b)))
}

// Download is how a job fetched its bundle: the method that produced the
// installed file and the bytes of targets received for the job (a patch
// it fell back from included).
type Download struct {
	Method DownloadMethod `json:"method,omitempty"`
	Bytes  uint64         `json:"bytes,omitempty"`
}

// Hello opens a stream.
type Hello struct {
	AgentVersion string
	LastApplied  uint64
	State        State
	// Attributes are what the device reports about itself (see package
	// inventory).
	Attributes map[string]string
}

// Event is one message from ferryd: exactly one field is set.
type Event struct {
	Delta    *Delta
	Accepted *Accepted
	Rejected *Rejected
	// Ping is the id of a ping to acknowledge; zero if none.
	Ping uint64
}

// Accepted answers a report that was recorded.
type Accepted struct {
	JobID          string
	DesiredVersion uint64
	Superseded     bool
}

// Rejected answers a report that was not recorded.
type Rejected struct {
	JobID          string
	DesiredVersion uint64
	// Code is the reason's name: "STALE", "UNKNOWN_VERSION",
	// "JOB_MISMATCH", "INVALID" or "UNVERIFIED".
	Code                  string
	Reason                string
	CurrentDesiredVersion uint64
}

// DownloadToken grants one target's download.
type DownloadToken struct {
	Token   string
	URL     string
	Expires time.Time
}

// Link is how the agent reaches ferryd; agent/transport implements it.
// Implementations must be safe for concurrent use.
type Link interface {
	// Dial opens a connection to the device port, authenticated with the
	// credentials' current certificate.
	Dial(ctx context.Context, creds *Credentials) (Conn, error)
	// HTTPClient returns a client for TUF metadata and targets on the API
	// port that presents the credentials' current certificate.
	HTTPClient(creds *Credentials) *http.Client
	// MetadataURL is the base URL of the TUF metadata.
	MetadataURL() string
}

// Conn is one connection to the device port.
type Conn interface {
	// Sync opens the device stream, sends hello and waits for the
	// session.
	Sync(ctx context.Context, hello Hello) (Stream, error)
	// Renew trades a certificate signing request (DER) for a fresh
	// certificate chain (DER, leaf first).
	Renew(ctx context.Context, csr []byte) ([][]byte, error)
	// DownloadToken asks for a token to download target.
	DownloadToken(ctx context.Context, target string) (DownloadToken, error)
	Close() error
}

// Stream is an open device stream. Recv is called from one goroutine and
// the send methods from one other (or the same) goroutine.
type Stream interface {
	// Nonce is the session's nonce, which signed reports carry.
	Nonce() string
	Recv() (Event, error)
	SendProgress(Progress) error
	// SendReport sends a signed report (a DSSE envelope).
	SendReport(envelope []byte) error
	// Ack acknowledges a ping (ping != 0) or a Delta's desired version.
	Ack(ping, desiredVersion uint64) error
	// SendInventory tells ferryd what the device now reports about itself
	// (its attributes changed during the stream).
	SendInventory(attributes map[string]string) error
	// Drain half-closes the stream and waits, until ctx ends, for the
	// server to end it: everything sent before has then been handled. The
	// agent drains before a reboot, so that its last Progress is recorded.
	Drain(ctx context.Context) error
}

// ErrRefused marks a Link error whose cause is that ferryd refuses the
// device's credential (revoked, unknown, not authenticated or not
// permitted), or that the device and ferryd no longer trust each other's
// certificates: retrying with the same credential does not help. Test it
// with errors.Is.
var ErrRefused = errors.New("ferryd refuses this device's credential")

// ErrUnavailable marks a Link error whose cause is that ferryd cannot
// serve the request for now (its store is unreachable, it is starting or
// stopping, or it cannot be reached): the same request may succeed later.
// A download token refused so is asked for again, with backoff, without
// failing the job. Test it with errors.Is.
var ErrUnavailable = errors.New("ferryd is unavailable")

// ErrRestart is returned by Run when the device must restart (a reboot
// step): the caller starts a new Agent on the same state, as the device
// would after booting.
var ErrRestart = errors.New("agent: restart requested")
