// Package inventory defines what a device reports about itself: the
// well-known attribute keys and the rules every attribute follows, shared
// by the agent that collects them and the server that stores them.
package inventory

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Well-known attribute keys, reported by the reference agent.
const (
	// Hardware is the device's hardware model, the one a bundle's signed
	// hardware list names.
	Hardware = "hardware"
	// OS is the operating system, "<ID>-<VERSION_ID>" of os-release
	// ("debian-12").
	OS = "os"
	// Kernel is the kernel release (uname -r).
	Kernel = "kernel"
	// AgentVersion is the agent's version.
	AgentVersion = "agent_version"
	// StorageFree is the free space of the agent's data directory, in
	// bytes, rounded down to a MiB.
	StorageFree = "storage_free_bytes"
)

// Limits on a device's attributes.
const (
	MaxAttributes = 64
	MaxKeyBytes   = 58 // so that "attr.<key>" is a label key name (63)
	MaxValueBytes = 256
)

var keyPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$`)

// ValidKey checks an attribute key: 1 to 58 letters, digits, '-', '_' or
// '.', starting and ending with a letter or digit (a Kubernetes label name,
// once prefixed with "attr.").
func ValidKey(k string) error {
	if len(k) == 0 || len(k) > MaxKeyBytes || !keyPattern.MatchString(k) {
		return fmt.Errorf("key %q: want 1 to %d letters, digits, '-', '_' or '.', starting and ending with a letter or digit", truncate(k), MaxKeyBytes)
	}
	return nil
}

// ValidValue checks an attribute value: at most 256 bytes of printable
// UTF-8. Only values that are also Kubernetes label values (at most 63
// letters, digits, '-', '_' or '.') can be selected by.
func ValidValue(v string) error {
	if len(v) > MaxValueBytes || !utf8.ValidString(v) || strings.ContainsFunc(v, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return fmt.Errorf("value %q: want at most %d bytes of printable UTF-8", truncate(v), MaxValueBytes)
	}
	return nil
}

// Validate checks a set of attributes.
func Validate(attrs map[string]string) error {
	if len(attrs) > MaxAttributes {
		return fmt.Errorf("%d attributes, at most %d allowed", len(attrs), MaxAttributes)
	}
	for k, v := range attrs {
		if err := ValidKey(k); err != nil {
			return err
		}
		if err := ValidValue(v); err != nil {
			return fmt.Errorf("attribute %s: %w", k, err)
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
