package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ferryhq/ferry/attest"
	"github.com/ferryhq/ferry/internal/version"
)

// Config configures an Agent. Link, Credentials, Store, Installer and
// TrustedRoot are required; the rest have defaults.
type Config struct {
	Link        Link
	Credentials *Credentials
	// DeviceID is the device's id, as in its certificate.
	DeviceID string
	Store    StateStore
	// TrustedRoot is the TUF root the device ships with (JSON); the newest
	// root it has verified since is kept in Store.
	TrustedRoot []byte
	Installer   Installer
	// Health runs after the restart that follows an install; Healthy if
	// nil.
	Health HealthChecker
	// Rebooter restarts the device after an install; Soft if nil.
	Rebooter Rebooter
	// ConfigApplier applies desired configuration; IgnoreConfig if nil.
	ConfigApplier ConfigApplier
	// Hardware is the device's hardware model; a bundle whose signed
	// metadata lists hardware models and not this one is rejected.
	Hardware string
	// DownloadDir holds partial and verified downloads.
	DownloadDir string
	// StorageDir, if set, is the directory whose file system's free space
	// the device reports (inventory.StorageFree).
	StorageDir string
	// InventoryHook, if set, is a command whose standard output, one
	// key=value a line, adds attributes to what the device reports about
	// itself (see attributes). It runs before each Hello and whenever the
	// inventory is collected again.
	InventoryHook []string
	// InventoryTimeout bounds a run of InventoryHook (default 10 s).
	InventoryTimeout time.Duration
	// InventoryInterval is how often the attributes are collected again
	// during a stream (default 1 h); they are also collected after each
	// job, and sent in an Inventory message when they changed.
	InventoryInterval time.Duration
	// AgentVersion is sent in Hello.
	AgentVersion string
	// OnRenew is called with the credentials after each renewal (to save
	// them).
	OnRenew func(*Credentials) error
	// RenewFraction of a certificate's lifetime after which it is renewed
	// (default 0.66).
	RenewFraction float64
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 1 s and
	// 2 min); each delay is drawn at random below the doubled bound
	// ("full jitter").
	MinBackoff, MaxBackoff time.Duration
	// DownloadAttempts (default 5) and DownloadBackoff (default 1 s):
	// retries of an interrupted download, each resuming with Range.
	DownloadAttempts int
	DownloadBackoff  time.Duration
	// DeltaMaxWindow is the largest window, in bytes, of a patch the
	// device applies (about the memory applying it takes; default 64 MiB);
	// a patch that needs more is not used and the full bundle is
	// downloaded. Negative: never use patches.
	DeltaMaxWindow int
	// Consent is asked when a desired state requires consent (see
	// ConsentPolicy); without it such a job ends REJECTED with
	// CodeConsentUnavailable.
	Consent Consenter
	// MaintenanceWindow, if set, is when the device installs and applies
	// configuration; outside it a job waits (consent.go).
	MaintenanceWindow *Window
	// ConsentRetry is how long the agent waits before asking again after
	// "later" without a duration, or a Consenter error (default 1 min).
	ConsentRetry time.Duration
	// ConsentKeepalive is how often a waiting job tells ferryd the device
	// is still there (default 30 s).
	ConsentKeepalive time.Duration
	Logger           *slog.Logger
	// Now is the clock (time.Now if nil).
	Now func() time.Time
}

// Agent carries out a device's desired state.
type Agent struct {
	cfg       Config
	log       *slog.Logger
	p         Persisted
	renewWait time.Time // no renewal attempt before this (after a failure)
	// dl is how the current job fetches its bundle; every Progress says it.
	dl Download
	// inventorySent is what the stream was last told about the device;
	// inventoryNext is when to collect it again, sooner if inventoryStale.
	inventorySent  map[string]string
	inventoryNext  time.Time
	inventoryStale bool
}

// New checks cfg and returns an agent.
func New(cfg Config) (*Agent, error) {
	switch {
	case cfg.Link == nil:
		return nil, errors.New("agent: a Link is required")
	case cfg.Credentials == nil:
		return nil, errors.New("agent: credentials are required")
	case cfg.Store == nil:
		return nil, errors.New("agent: a state store is required")
	case cfg.Installer == nil:
		return nil, errors.New("agent: an installer is required")
	case len(cfg.TrustedRoot) == 0:
		return nil, errors.New("agent: a trusted TUF root is required")
	case cfg.DownloadDir == "":
		return nil, errors.New("agent: a download directory is required")
	}
	if cfg.Health == nil {
		cfg.Health = Healthy{}
	}
	if cfg.Rebooter == nil {
		cfg.Rebooter = Soft{}
	}
	if cfg.ConfigApplier == nil {
		cfg.ConfigApplier = IgnoreConfig{}
	}
	if cfg.RenewFraction <= 0 || cfg.RenewFraction >= 1 {
		cfg.RenewFraction = 0.66
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(2*time.Minute, cfg.MinBackoff)
	}
	if cfg.DownloadAttempts <= 0 {
		cfg.DownloadAttempts = 5
	}
	if cfg.DownloadBackoff <= 0 {
		cfg.DownloadBackoff = time.Second
	}
	if cfg.DeltaMaxWindow == 0 {
		cfg.DeltaMaxWindow = 64 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ConsentRetry <= 0 {
		cfg.ConsentRetry = time.Minute
	}
	if cfg.ConsentKeepalive <= 0 {
		cfg.ConsentKeepalive = 30 * time.Second
	}
	if cfg.InventoryTimeout <= 0 {
		cfg.InventoryTimeout = 10 * time.Second
	}
	if cfg.InventoryInterval <= 0 {
		cfg.InventoryInterval = time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AgentVersion == "" {
		cfg.AgentVersion = "ferry-agent"
	}
	return &Agent{cfg: cfg, log: cfg.Logger.With("device", cfg.DeviceID)}, nil
}

// errRenew ends a session when the certificate is due for renewal.
var errRenew = errors.New("certificate renewal due")

// Run keeps the device's stream open and carries out every desired state
// until ctx ends (it then returns nil) or a reboot step asks for a restart
// (ErrRestart: start a new Agent on the same Store).
func (a *Agent) Run(ctx context.Context) error {
	p, err := a.cfg.Store.Load(ctx)
	if err != nil {
		return err
	}
	a.p = p
	a.cleanDownloads(ctx)
	failures := 0
	for {
		start := a.cfg.Now()
		err := a.session(ctx)
		if errors.Is(err, ErrRestart) {
			return ErrRestart
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errRenew) {
			failures = 0
			continue
		}
		if a.cfg.Now().Sub(start) > a.cfg.MaxBackoff {
			failures = 0 // the stream was up for a while: start the backoff over
		}
		failures++
		delay := a.backoff(failures)
		a.log.InfoContext(ctx, "stream ended; reconnecting", "err", err, "in", delay.Round(time.Millisecond))
		if sleep(ctx, delay) != nil {
			return nil
		}
	}
}

// backoff returns a random delay in [min, bound), bound doubling with each
// failure up to MaxBackoff.
func (a *Agent) backoff(failures int) time.Duration {
	bound := a.cfg.MinBackoff << min(failures-1, 20)
	if bound > a.cfg.MaxBackoff || bound <= 0 {
		bound = a.cfg.MaxBackoff
	}
	return a.cfg.MinBackoff/2 + rand.N(bound-a.cfg.MinBackoff/2+1)
}

func (a *Agent) save(ctx context.Context) error {
	if err := a.cfg.Store.Save(ctx, a.p); err != nil {
		return fmt.Errorf("save agent state: %w", err)
	}
	return nil
}

// session runs one connection: renewal if due, the stream, pending
// confirmations and reports, and every Delta.
func (a *Agent) session(ctx context.Context) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	conn, err := a.cfg.Link.Dial(ctx, a.cfg.Credentials)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	if now := a.cfg.Now(); !now.Before(a.cfg.Credentials.RenewAt(a.cfg.RenewFraction)) && !now.Before(a.renewWait) {
		if err := a.renew(ctx, conn); err != nil {
			a.renewWait = now.Add(a.cfg.MinBackoff * 30)
			a.log.WarnContext(ctx, "certificate renewal failed", "err", err)
		} else {
			return errRenew // reconnect with the new certificate
		}
	}
	renewAt := a.cfg.Credentials.RenewAt(a.cfg.RenewFraction)
	if renewAt.Before(a.renewWait) {
		renewAt = a.renewWait
	}
	timer := time.AfterFunc(renewAt.Sub(a.cfg.Now()), func() { cancel(errRenew) })
	defer timer.Stop()

	attrs := a.attributes(ctx)
	stream, err := conn.Sync(ctx, Hello{AgentVersion: a.cfg.AgentVersion, LastApplied: a.p.LastApplied, State: a.p.Current, Attributes: attrs})
	if err != nil {
		return a.cause(ctx, fmt.Errorf("sync: %w", err))
	}
	a.inventorySent, a.inventoryNext, a.inventoryStale = attrs, a.cfg.Now().Add(a.cfg.InventoryInterval), false
	a.log.DebugContext(ctx, "stream open", "last_applied", a.p.LastApplied)
	if a.p.Pending != nil {
		// resume ends with the report, sent once.
		if err := a.resume(ctx, stream); err != nil {
			return a.cause(ctx, err)
		}
	} else if a.p.Outbox != nil {
		if err := a.sendReport(stream, *a.p.Outbox); err != nil {
			return a.cause(ctx, err)
		}
	}
	for {
		ev, err := stream.Recv()
		if err != nil {
			return a.cause(ctx, err)
		}
		switch {
		case ev.Ping != 0:
			err = stream.Ack(ev.Ping, 0)
		case ev.Delta != nil:
			if err = stream.Ack(0, ev.Delta.DesiredVersion); err == nil {
				err = a.delta(ctx, conn, stream, *ev.Delta)
			}
		case ev.Accepted != nil:
			err = a.accepted(ctx, *ev.Accepted)
		case ev.Rejected != nil:
			err = a.rejected(ctx, *ev.Rejected)
		}
		if err == nil {
			err = a.refreshInventory(ctx, stream)
		}
		if err != nil {
			return a.cause(ctx, err)
		}
	}
}

// cause prefers the reason the session was canceled (renewal due).
func (a *Agent) cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return c
	}
	return err
}

func (a *Agent) renew(ctx context.Context, conn Conn) error {
	csr, err := CSR(a.cfg.Credentials.Key())
	if err != nil {
		return err
	}
	chain, err := conn.Renew(ctx, csr)
	if err != nil {
		return fmt.Errorf("renew certificate: %w", err)
	}
	if err := a.cfg.Credentials.SetChain(chain); err != nil {
		return fmt.Errorf("renewed certificate: %w", err)
	}
	a.log.InfoContext(ctx, "certificate renewed", "not_after", a.cfg.Credentials.Leaf().NotAfter)
	if a.cfg.OnRenew != nil {
		if err := a.cfg.OnRenew(a.cfg.Credentials); err != nil {
			return fmt.Errorf("save renewed certificate: %w", err)
		}
	}
	return nil
}

func (a *Agent) accepted(ctx context.Context, acc Accepted) error {
	o := a.p.Outbox
	if o == nil || o.JobID != acc.JobID || o.DesiredVersion != acc.DesiredVersion {
		return nil
	}
	a.log.InfoContext(ctx, "report accepted", "job", acc.JobID, "version", acc.DesiredVersion, "status", o.Status)
	a.p.LastApplied = max(a.p.LastApplied, acc.DesiredVersion)
	a.p.Outbox = nil
	return a.save(ctx)
}

func (a *Agent) rejected(ctx context.Context, rej Rejected) error {
	o := a.p.Outbox
	if o == nil || o.JobID != rej.JobID || o.DesiredVersion != rej.DesiredVersion {
		return nil
	}
	// Whatever the reason, sending the same report again changes nothing:
	// the server's newest Delta (if any) follows.
	a.log.WarnContext(ctx, "report rejected", "job", rej.JobID, "version", rej.DesiredVersion, "code", rej.Code, "reason", rej.Reason)
	a.p.LastApplied = max(a.p.LastApplied, rej.DesiredVersion)
	a.p.Outbox = nil
	return a.save(ctx)
}

// delta carries out a desired state unless it was already answered.
func (a *Agent) delta(ctx context.Context, conn Conn, stream Stream, d Delta) error {
	if d.DesiredVersion <= a.p.LastApplied || (a.p.Outbox != nil && d.DesiredVersion <= a.p.Outbox.DesiredVersion) {
		return nil // done already; a repeated Delta is harmless
	}
	a.log.InfoContext(ctx, "delta", "job", d.JobID, "version", d.DesiredVersion)
	res, err := a.job(ctx, conn, stream, d)
	if err != nil {
		return err // ErrRestart after a persisted install, or the stream broke
	}
	return a.finish(ctx, stream, res, d.Desired.Bundle)
}

// finish records a final result, removes the job's download and reports
// the result. download is the bundle the job installed or meant to (nil
// for configuration only).
func (a *Agent) finish(ctx context.Context, stream Stream, res Result, download *Bundle) error {
	a.log.InfoContext(ctx, "job ended", "job", res.JobID, "version", res.DesiredVersion, "status", res.Status,
		"step", res.Step, "code", res.ErrorCode, "message", res.Message)
	a.p.Current = res.State.clone()
	a.p.Pending = nil
	a.p.Outbox = &res
	a.inventoryStale = true // an install may change what the device reports
	if err := a.save(ctx); err != nil {
		return err
	}
	if download != nil {
		// After a crash here, the start-up cleaning removes it.
		if err := removeFile(a.partPath(download)); err != nil {
			a.log.WarnContext(ctx, "removing the job's download failed", "err", err)
		}
	}
	return a.sendReport(stream, res)
}

// partPath is where bundle b is downloaded.
func (a *Agent) partPath(b *Bundle) string {
	return filepath.Join(a.cfg.DownloadDir, b.SHA256+".part")
}

func (a *Agent) sendReport(stream Stream, res Result) error {
	env, err := SignReport(a.cfg.Credentials, a.cfg.DeviceID, stream.Nonce(), res, a.cfg.Now())
	if err != nil {
		return err
	}
	return stream.SendReport(env)
}

// SignReport returns the DSSE envelope of res, signed with the device key
// for the stream with nonce.
func SignReport(creds *Credentials, device, nonce string, res Result, now time.Time) ([]byte, error) {
	p := attest.Report{
		Device:         device,
		JobID:          res.JobID,
		DesiredVersion: res.DesiredVersion,
		Status:         res.Status.String(),
		ErrorCode:      res.ErrorCode,
		Message:        res.Message,
		Time:           now.UTC(),
		Nonce:          nonce,
		Config:         res.State.Config,
	}
	if res.Step != StepNone {
		p.Step = res.Step.String()
	}
	if b := res.State.Bundle; b != nil {
		p.Bundle = &attest.Bundle{TargetPath: b.TargetPath, Length: b.Length, SHA256: b.SHA256}
	}
	env, err := attest.Sign(creds.Key(), attest.NewStatement(p))
	if err != nil {
		return nil, fmt.Errorf("sign report: %w", err)
	}
	return env, nil
}

// jobError ends a job in a step with a code.
type jobError struct {
	step Step
	code string
	err  error
}

func (e *jobError) Error() string { return e.code + ": " + e.err.Error() }
func (e *jobError) Unwrap() error { return e.err }

func (a *Agent) progress(stream Stream, d Delta, step Step, pct uint32) error {
	return stream.SendProgress(Progress{JobID: d.JobID, DesiredVersion: d.DesiredVersion, Step: step, Percent: pct, Download: a.dl})
}

// notice sends a Progress with a code that does not end the job; the
// message is cut to the 1024 bytes ferryd keeps.
func (a *Agent) notice(stream Stream, d Delta, step Step, code, message string) error {
	if len(message) > maxNotice {
		message = strings.ToValidUTF8(message[:maxNotice-3], "") + "..."
	}
	return stream.SendProgress(Progress{JobID: d.JobID, DesiredVersion: d.DesiredVersion, Step: step, Download: a.dl, Code: code, Message: message})
}

// maxNotice is the longest notice message ferryd records.
const maxNotice = 1024

// job carries out d. It returns the final result, or ErrRestart once an
// install is persisted and the device restarts, or an error when the
// stream broke (the job is then done again on the next Delta).
func (a *Agent) job(ctx context.Context, conn Conn, stream Stream, d Delta) (Result, error) {
	cur := a.p.Current
	res := Result{JobID: d.JobID, DesiredVersion: d.DesiredVersion, State: cur.clone()}
	a.dl = Download{}
	fail := func(status Status, step Step, code string, err error) (Result, error) {
		res.Status, res.Step, res.ErrorCode, res.Message = status, step, code, err.Error()
		return res, nil
	}
	want := d.Desired
	next := cur.clone()
	next.Config = maps.Clone(want.Config)
	job := Job{ID: d.JobID, DesiredVersion: d.DesiredVersion, Config: want.Config}
	gate := &consentGate{policy: want.Consent}

	if want.Bundle == nil || (cur.Bundle != nil && *cur.Bundle == *want.Bundle) {
		// Configuration only: the same path as a bundle, without the
		// software steps.
		job.Bundle, job.Version = cur.Bundle, cur.Version
		if !maps.Equal(cur.Config, want.Config) {
			if refused, err := a.beforeInstall(ctx, stream, d, gate, job); err != nil || refused != nil {
				return a.refused(res, refused, err)
			}
			if err := a.progress(stream, d, StepInstalling, 0); err != nil {
				return res, err
			}
			if err := a.cfg.ConfigApplier.Apply(ctx, job); err != nil {
				return fail(StatusFailed, StepInstalling, CodeConfigFailed, err)
			}
		}
		res.Status, res.State = StatusSucceeded, next
		return res, nil
	}

	if err := a.progress(stream, d, StepDownloading, 0); err != nil {
		return res, err
	}
	client := a.cfg.Link.HTTPClient(a.cfg.Credentials)
	defer client.CloseIdleConnections()
	tf, lookup, newRoot, err := target(ctx, client, a.cfg.Link.MetadataURL(), a.trustedRoot(), want.Bundle.TargetPath)
	if newRoot != nil {
		a.p.TrustedRoot = newRoot
	}
	if err != nil {
		return a.jobFailure(ctx, fail, err)
	}
	if sha := hex.EncodeToString(tf.Hashes["sha256"]); uint64(tf.Length) != want.Bundle.Length || sha != want.Bundle.SHA256 {
		return fail(StatusFailed, StepVerifying, CodeTUFMismatch, fmt.Errorf(
			"the desired bundle (%d bytes, sha256 %s) is not the one the TUF repository signed (%d bytes, sha256 %s)",
			want.Bundle.Length, want.Bundle.SHA256, tf.Length, sha))
	}
	var custom []byte
	if tf.Custom != nil {
		custom = *tf.Custom
	}
	info, err := ParseBundleInfo(custom)
	if err != nil {
		return fail(StatusFailed, StepVerifying, CodeTUFMismatch, err)
	}
	if len(info.Hardware) > 0 && !slices.Contains(info.Hardware, a.cfg.Hardware) {
		return fail(StatusRejected, StepNone, CodeHardwareIncompatible,
			fmt.Errorf("bundle is for hardware %s, this device is %q", strings.Join(info.Hardware, ", "), a.cfg.Hardware))
	}
	if cur.Bundle != nil && CompareVersions(info.Version, cur.Version) < 0 {
		switch {
		case !want.Forced:
			return fail(StatusRejected, StepNone, CodeDowngradeNotForced,
				fmt.Errorf("version %s is older than the running %s and the desired state is not forced", info.Version, cur.Version))
		case !info.DowngradeAllowed:
			return fail(StatusRejected, StepNone, CodeDowngradeNotSigned,
				fmt.Errorf("version %s is older than the running %s and its signed metadata does not allow downgrades", info.Version, cur.Version))
		}
	}
	next.Bundle, next.Version = want.Bundle, info.Version
	job.Bundle, job.Version = want.Bundle, info.Version

	// Download, streaming to disk, resuming with Range: a signed patch
	// from the running bundle when one can be used, else the full bundle
	// (patch.go).
	if err := makeDir(a.cfg.DownloadDir, 0o700); err != nil {
		return fail(StatusFailed, StepDownloading, CodeDownloadFailed, err)
	}
	part := a.partPath(want.Bundle)
	err = a.fetch(ctx, &fetchJob{
		conn: conn, stream: stream, d: d, client: client, lookup: lookup,
		cur: cur.Bundle, want: want.Bundle, tf: tf, part: part,
	})
	if se := (*streamError)(nil); errors.As(err, &se) {
		return res, se.err
	}
	if err != nil {
		return a.jobFailure(ctx, fail, err)
	}
	// The download stays until the job ends (finish), so that the file an
	// installer was given exists until its job is done.

	// Install, with the desired configuration. The intent is saved first:
	// whatever instruction a power loss stops the install at, the agent
	// started again finds PhaseInstalling and rolls it back.
	job.Path = part
	if refused, err := a.beforeInstall(ctx, stream, d, gate, job); err != nil || refused != nil {
		return a.refused(res, refused, err)
	}
	if err := a.progress(stream, d, StepInstalling, 0); err != nil {
		return res, err
	}
	pd := &Pending{JobID: d.JobID, DesiredVersion: d.DesiredVersion, Phase: PhaseInstalling, Previous: cur.clone(), Next: next, Download: a.dl}
	a.p.Pending = pd
	if err := a.save(ctx); err != nil {
		a.p.Pending = nil
		return fail(StatusFailed, StepInstalling, CodeInstallFailed, err)
	}
	if err := a.cfg.Installer.Install(ctx, job); err != nil {
		// Install changed nothing: the job ends here.
		return fail(StatusFailed, StepInstalling, CodeInstallFailed, err)
	}
	if !maps.Equal(cur.Config, want.Config) {
		if err := a.cfg.ConfigApplier.Apply(ctx, job); err != nil {
			return a.rollBackNow(ctx, pd, Result{Status: StatusFailed, Step: StepInstalling, ErrorCode: CodeConfigFailed, Message: err.Error()}, false)
		}
	}

	// Consent to reboot, when asked for. The job is still PhaseInstalling:
	// an agent stopped while it waits rolls the install back.
	if refused, err := a.awaitConsent(ctx, stream, d, gate, job, ConsentReboot); err != nil {
		return res, err
	} else if refused != nil {
		return a.rollBackNow(ctx, pd, Result{Status: StatusRejected, Step: StepAwaitingConsent, ErrorCode: refused.code, Message: refused.message}, false)
	}

	// Reboot: persist first, so that the restarted agent confirms.
	if err := a.progress(stream, d, StepRebooting, 0); err != nil {
		return res, err
	}
	pd.Phase = PhaseInstalled
	if err := a.save(ctx); err != nil {
		return a.rollBackNow(ctx, pd, Result{Status: StatusFailed, Step: StepRebooting, ErrorCode: CodeRebootFailed, Message: err.Error()}, false)
	}
	// Let ferryd record the steps so far before the connection goes down.
	drainCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := stream.Drain(drainCtx); err != nil {
		a.log.WarnContext(ctx, "stream not drained before reboot", "err", err)
	}
	cancel()
	if err := a.cfg.Rebooter.Reboot(ctx, job); err != nil && !errors.Is(err, ErrRestart) {
		return a.rollBackNow(ctx, pd, Result{Status: StatusFailed, Step: StepRebooting, ErrorCode: CodeRebootFailed, Message: err.Error()}, false)
	}
	return res, ErrRestart
}

// jobFailure turns a step's error into a FAILED result; other errors
// (the context ended) end the session.
func (a *Agent) jobFailure(ctx context.Context, fail func(Status, Step, string, error) (Result, error), err error) (Result, error) {
	var je *jobError
	if ctx.Err() == nil && errors.As(err, &je) {
		return fail(StatusFailed, je.step, je.code, je.err)
	}
	if ctx.Err() != nil {
		return Result{}, ctx.Err()
	}
	return fail(StatusFailed, StepDownloading, CodeDownloadFailed, err)
}

func (a *Agent) trustedRoot() []byte {
	if len(a.p.TrustedRoot) > 0 {
		return a.p.TrustedRoot
	}
	return a.cfg.TrustedRoot
}

// CompareVersions orders bundle versions by Semantic Versioning 2.0
// precedence: -1, 0 or +1 as a is lower than, equal to or higher than b.
// Numeric identifiers compare numerically ("1.0.0-rc.9" < "1.0.0-rc.10"),
// build metadata is ignored ("2.0.0+build5" == "2.0.0"), a leading "v" is
// accepted, the shorthand "1.2" equals "1.2.0", and a string that is not a
// version sorts below every version (see internal/version).
func CompareVersions(a, b string) int { return version.Compare(a, b) }
