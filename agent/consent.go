package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// ConsentPolicy says when the agent asks for consent before it goes on
// with a job (it comes with the desired state).
type ConsentPolicy struct {
	// BeforeInstall: ask before installing (or applying configuration).
	BeforeInstall bool `json:"beforeInstall,omitempty"`
	// BeforeReboot: ask before the reboot that follows an install.
	BeforeReboot bool `json:"beforeReboot,omitempty"`
	// MaxDeferral bounds how long the job may be deferred, from the first
	// time the agent asks; once passed, the job ends REJECTED with
	// CodeConsentExpired. Zero: no bound.
	MaxDeferral time.Duration `json:"maxDeferral,omitempty"`
}

// Decision is an answer to a request for consent; the numbers are the
// protocol's.
type Decision int

// Decisions.
const (
	DecisionNone Decision = iota
	DecisionAccepted
	DecisionDeferred
	DecisionDeclined
)

var decisionNames = [...]string{"", "accepted", "deferred", "declined"}

func (d Decision) String() string {
	if d < 0 || int(d) >= len(decisionNames) {
		return "unknown"
	}
	return decisionNames[d]
}

// Consent actions: what the agent asks consent for.
const (
	ConsentInstall = "install"
	ConsentReboot  = "reboot"
)

// Consent is what the agent reports about a request for consent (or a
// wait for the maintenance window).
type Consent struct {
	Decision Decision
	// Actor is who answered ("maintenance-window" for a window wait).
	Actor string
	At    time.Time
	// DeferredUntil is when the agent asks again (DecisionDeferred).
	DeferredUntil time.Time
	// Action is ConsentInstall or ConsentReboot.
	Action string
}

// ConsentRequest is what a Consenter is asked.
type ConsentRequest struct {
	// Action is ConsentInstall or ConsentReboot.
	Action string
	Job    Job
	// Deadline is when deferring ends (zero: no deadline).
	Deadline time.Time
}

// ConsentAnswer is a Consenter's answer.
type ConsentAnswer struct {
	Decision Decision
	// Actor is who answered, for the record ("alice", "kiosk").
	Actor string
	// Later is how long to wait before asking again (DecisionDeferred;
	// zero: the agent's ConsentRetry).
	Later time.Duration
}

// Consenter asks for consent on the device: a person through a local
// user interface, or an application that decides. Ask may block until
// the answer comes (or ctx ends).
type Consenter interface {
	Ask(ctx context.Context, req ConsentRequest) (ConsentAnswer, error)
}

// ConsentHook is a Consenter that runs a command. The command gets
// "consent" as its last argument, the hook environment of the job (see
// Exec) with FERRY_ACTION=consent, and:
//
//	FERRY_CONSENT_ACTION    install or reboot
//	FERRY_CONSENT_DEADLINE  when deferring ends, RFC 3339 (absent: never)
//
// It prints one line, and exits 0:
//
//	accept [who]
//	later [duration] [who]     (duration in Go syntax: 10m, 1h30m)
//	decline [who]
//
// The command may take as long as it needs (until the user answers).
type ConsentHook struct {
	Command []string
	Env     []string
}

// Ask implements Consenter.
func (h ConsentHook) Ask(ctx context.Context, req ConsentRequest) (ConsentAnswer, error) {
	if len(h.Command) == 0 {
		return ConsentAnswer{}, errors.New("consent hook: no command")
	}
	cmd := exec.CommandContext(ctx, h.Command[0], append(slices.Clone(h.Command[1:]), "consent")...)
	cmd.Env = append(append(os.Environ(), h.Env...), HookEnv("consent", req.Job)...)
	cmd.Env = append(cmd.Env, "FERRY_CONSENT_ACTION="+req.Action)
	if !req.Deadline.IsZero() {
		cmd.Env = append(cmd.Env, "FERRY_CONSENT_DEADLINE="+req.Deadline.UTC().Format(time.RFC3339))
	}
	out := &limitedBuffer{max: 4 << 10}
	cmd.Stdout = out
	errOut := &limitedBuffer{max: 4 << 10}
	cmd.Stderr = errOut
	if err := cmd.Run(); err != nil {
		return ConsentAnswer{}, fmt.Errorf("consent hook: %w: %s", err, strings.TrimSpace(string(errOut.b)))
	}
	return ParseConsentAnswer(string(out.b))
}

// ParseConsentAnswer reads a consent hook's answer: its first non-empty
// line, "accept [who]", "later [duration] [who]" or "decline [who]".
func ParseConsentAnswer(s string) (ConsentAnswer, error) {
	var line string
	for l := range strings.SplitSeq(s, "\n") {
		if line = strings.TrimSpace(l); line != "" {
			break
		}
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return ConsentAnswer{}, errors.New("consent answer: empty (want accept, later or decline)")
	}
	var a ConsentAnswer
	rest := f[1:]
	switch strings.ToLower(f[0]) {
	case "accept", "accepted", "yes":
		a.Decision = DecisionAccepted
	case "decline", "declined", "no":
		a.Decision = DecisionDeclined
	case "later", "defer", "deferred":
		a.Decision = DecisionDeferred
		if len(rest) > 0 {
			if d, err := time.ParseDuration(rest[0]); err == nil {
				if d <= 0 {
					return ConsentAnswer{}, fmt.Errorf("consent answer: later %s: want a positive duration", rest[0])
				}
				a.Later, rest = d, rest[1:]
			}
		}
	default:
		return ConsentAnswer{}, fmt.Errorf("consent answer %q: want accept, later [duration] or decline, then who", line)
	}
	a.Actor = strings.Join(rest, " ")
	if len(a.Actor) > 256 {
		return ConsentAnswer{}, errors.New("consent answer: who is longer than 256 bytes")
	}
	return a, nil
}

// consentGate is a job's asking for consent: the deadline runs from the
// first time the job asks.
type consentGate struct {
	policy *ConsentPolicy
	first  time.Time
}

func (g *consentGate) deadline() time.Time {
	if g.policy.MaxDeferral <= 0 || g.first.IsZero() {
		return time.Time{}
	}
	return g.first.Add(g.policy.MaxDeferral)
}

// consentRefused is the end of a job whose consent was not given.
type consentRefused struct {
	code, message string
}

// awaitConsent asks for consent to action when the job's policy wants it,
// and waits (deferring as answered) until it is given. It returns nil when
// the job may go on, a refusal to end it with, or an error when ctx ended
// or the stream broke.
func (a *Agent) awaitConsent(ctx context.Context, stream Stream, d Delta, g *consentGate, job Job, action string) (*consentRefused, error) {
	p := g.policy
	if p == nil || (action == ConsentInstall && !p.BeforeInstall) || (action == ConsentReboot && !p.BeforeReboot) {
		return nil, nil
	}
	if g.first.IsZero() {
		g.first = a.cfg.Now()
	}
	send := func(code, msg string, c *Consent) error {
		return stream.SendProgress(Progress{JobID: d.JobID, DesiredVersion: d.DesiredVersion, Step: StepAwaitingConsent,
			Download: a.dl, Code: code, Message: msg, Consent: c})
	}
	if a.cfg.Consent == nil {
		return &consentRefused{CodeConsentUnavailable, "the desired state asks for consent to " + action + " and this device has no consent hook"}, nil
	}
	if err := send("consent.requested", "asking for consent to "+action, nil); err != nil {
		return nil, err
	}
	a.log.InfoContext(ctx, "asking for consent", "job", d.JobID, "action", action)
	for {
		deadline := g.deadline()
		if !deadline.IsZero() && !a.cfg.Now().Before(deadline) {
			return &consentRefused{CodeConsentExpired, fmt.Sprintf("no consent to %s within %v", action, p.MaxDeferral)}, nil
		}
		ans, err := a.cfg.Consent.Ask(ctx, ConsentRequest{Action: action, Job: job, Deadline: deadline})
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		now := a.cfg.Now()
		if err != nil {
			a.log.WarnContext(ctx, "asking for consent failed", "err", err)
			if err := send("consent.error", err.Error(), nil); err != nil {
				return nil, err
			}
			ans = ConsentAnswer{Decision: DecisionDeferred}
		}
		c := &Consent{Decision: ans.Decision, Actor: ans.Actor, At: now, Action: action}
		switch ans.Decision {
		case DecisionAccepted:
			a.log.InfoContext(ctx, "consent given", "job", d.JobID, "action", action, "by", ans.Actor)
			return nil, send("consent.accepted", "", c)
		case DecisionDeclined:
			a.log.InfoContext(ctx, "consent declined", "job", d.JobID, "action", action, "by", ans.Actor)
			if err := send("consent.declined", "", c); err != nil {
				return nil, err
			}
			return &consentRefused{CodeConsentDeclined, fmt.Sprintf("%s declined by %s at %s", action, cmpOr(ans.Actor, "(unnamed)"), now.UTC().Format(time.RFC3339))}, nil
		}
		later := ans.Later
		if later <= 0 {
			later = a.cfg.ConsentRetry
		}
		until := now.Add(later)
		if !deadline.IsZero() && until.After(deadline) {
			until = deadline
		}
		if err == nil {
			c.DeferredUntil = until
			if err := send("consent.deferred", "", c); err != nil {
				return nil, err
			}
		}
		if err := a.waitUntil(ctx, stream, d, until); err != nil {
			return nil, err
		}
	}
}

// waitUntil sleeps until t by the agent's clock, telling ferryd now and
// then that the device is still there (a Progress that repeats the step,
// which ferryd does not add to the history).
func (a *Agent) waitUntil(ctx context.Context, stream Stream, d Delta, t time.Time) error {
	for {
		left := t.Sub(a.cfg.Now())
		if left <= 0 {
			return nil
		}
		if err := sleep(ctx, min(left, a.cfg.ConsentKeepalive)); err != nil {
			return err
		}
		if t.Sub(a.cfg.Now()) > 0 {
			if err := stream.SendProgress(Progress{JobID: d.JobID, DesiredVersion: d.DesiredVersion, Step: StepAwaitingConsent, Download: a.dl}); err != nil {
				return err
			}
		}
	}
}

// awaitWindow waits until the device's maintenance window is open,
// reporting the wait as StepAwaitingConsent with the window as the actor.
func (a *Agent) awaitWindow(ctx context.Context, stream Stream, d Delta) error {
	w := a.cfg.MaintenanceWindow
	if w == nil {
		return nil
	}
	for {
		now := a.cfg.Now()
		open, opens := w.Next(now)
		if open {
			return nil
		}
		a.log.InfoContext(ctx, "waiting for the maintenance window", "job", d.JobID, "opens", opens)
		c := &Consent{Decision: DecisionDeferred, Actor: "maintenance-window", At: now, DeferredUntil: opens, Action: ConsentInstall}
		if err := stream.SendProgress(Progress{JobID: d.JobID, DesiredVersion: d.DesiredVersion, Step: StepAwaitingConsent, Download: a.dl,
			Code: "maintenance.window", Message: "waiting for the maintenance window " + w.String(), Consent: c}); err != nil {
			return err
		}
		if err := a.waitUntil(ctx, stream, d, opens); err != nil {
			return err
		}
	}
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// beforeInstall waits for consent to install and then for the maintenance
// window.
func (a *Agent) beforeInstall(ctx context.Context, stream Stream, d Delta, g *consentGate, job Job) (*consentRefused, error) {
	if refused, err := a.awaitConsent(ctx, stream, d, g, job, ConsentInstall); err != nil || refused != nil {
		return refused, err
	}
	return nil, a.awaitWindow(ctx, stream, d)
}

// refused ends a job whose consent was refused as REJECTED in
// StepAwaitingConsent, with nothing changed; an error ends the session.
func (a *Agent) refused(res Result, r *consentRefused, err error) (Result, error) {
	if err != nil {
		return res, err
	}
	res.Status, res.Step, res.ErrorCode, res.Message = StatusRejected, StepAwaitingConsent, r.code, r.message
	return res, nil
}
