package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
)

// consentFlags are the flags that ask devices for consent.
type consentFlags struct {
	require     []string
	maxDeferral time.Duration
}

func (c *consentFlags) add(f *pflag.FlagSet) {
	f.StringSliceVar(&c.require, "require-consent", nil, "devices ask for consent before: install, reboot, or both (the flag alone: install,reboot)")
	f.Lookup("require-consent").NoOptDefVal = "install,reboot"
	f.DurationVar(&c.maxDeferral, "consent-max-deferral", 0, "longest a device may defer the job; then it ends REJECTED (consent.expired) (0: no limit)")
}

// policy returns the consent policy the flags ask for (nil: none).
func (c *consentFlags) policy() (*devicev1.ConsentPolicy, error) {
	if len(c.require) == 0 {
		if c.maxDeferral != 0 {
			return nil, fmt.Errorf("--consent-max-deferral needs --require-consent")
		}
		return nil, nil
	}
	p := &devicev1.ConsentPolicy{}
	for _, w := range c.require {
		switch strings.ToLower(strings.TrimSpace(w)) {
		case "install":
			p.BeforeInstall = true
		case "reboot":
			p.BeforeReboot = true
		default:
			return nil, fmt.Errorf("--require-consent: %q is not install or reboot", w)
		}
	}
	if c.maxDeferral < 0 {
		return nil, fmt.Errorf("--consent-max-deferral: must not be negative")
	}
	if c.maxDeferral > 0 {
		p.MaxDeferral = durationpb.New(c.maxDeferral)
	}
	return p, nil
}

// fmtConsent describes a consent policy: "before install and reboot, deferred at most 72h0m0s".
func fmtConsent(p *devicev1.ConsentPolicy) string {
	var what []string
	if p.GetBeforeInstall() {
		what = append(what, "install")
	}
	if p.GetBeforeReboot() {
		what = append(what, "reboot")
	}
	out := "asked before " + strings.Join(what, " and ")
	if d := p.GetMaxDeferral(); d != nil {
		out += fmt.Sprintf(", deferred at most %v", d.AsDuration())
	}
	return out
}
