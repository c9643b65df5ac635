package replica

import (
	"fmt"
	"time"

	"github.com/ferryhq/ferry/store"
)

// StepAwaitingConsent is the step of a job whose device waits for consent
// (a person or an application on the device) or for its maintenance
// window.
const StepAwaitingConsent Step = "AWAITING_CONSENT"

// EventJobConsent is the history entry of an answer a device got when it
// asked for consent, or of a wait for its maintenance window.
const EventJobConsent = "job_consent"

// MaxConsentDeferral bounds ConsentPolicy.MaxDeferral.
const MaxConsentDeferral = 90 * 24 * time.Hour

// ConsentDecision is an answer to a request for consent.
type ConsentDecision string

// Consent decisions.
const (
	ConsentAccepted ConsentDecision = "ACCEPTED"
	ConsentDeferred ConsentDecision = "DEFERRED"
	ConsentDeclined ConsentDecision = "DECLINED"
)

// Consent is what a device was answered when it asked for consent, as its
// Progress says.
type Consent struct {
	Decision ConsentDecision
	// Actor is who answered, as the device says.
	Actor         string
	At            time.Time
	DeferredUntil time.Time
	// Action is what the consent is for: "install" or "reboot".
	Action string
}

func (c *Consent) validate() error {
	switch c.Decision {
	case ConsentAccepted, ConsentDeferred, ConsentDeclined:
	default:
		return invalid("consent.decision", "unknown decision %q", c.Decision)
	}
	switch c.Action {
	case "", "install", "reboot":
	default:
		return invalid("consent.action", "must be install or reboot, not %q", c.Action)
	}
	return validateText("consent.actor", c.Actor)
}

// describe is the history's message for c.
func (c *Consent) describe() string {
	what := c.Action
	if what == "" {
		what = "job"
	}
	who := c.Actor
	if who == "" {
		who = "(unnamed)"
	}
	at := c.At.UTC().Format(time.RFC3339)
	switch c.Decision {
	case ConsentAccepted:
		return fmt.Sprintf("%s accepted by %s at %s", what, who, at)
	case ConsentDeclined:
		return fmt.Sprintf("%s declined by %s at %s", what, who, at)
	}
	return fmt.Sprintf("%s deferred by %s at %s until %s", what, who, at, c.DeferredUntil.UTC().Format(time.RFC3339))
}

func validateConsentPolicy(p *store.ConsentPolicy) error {
	if p == nil {
		return nil
	}
	if p.MaxDeferral < 0 || p.MaxDeferral > MaxConsentDeferral {
		return invalid("document.consent.max_deferral", "must be between 0 and %v", MaxConsentDeferral)
	}
	if !p.BeforeInstall && !p.BeforeReboot {
		return invalid("document.consent", "asks for consent neither before install nor before reboot")
	}
	return nil
}
