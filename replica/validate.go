package replica

import (
	"encoding/hex"
	"fmt"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/ferryhq/ferry/credentials"
	"github.com/ferryhq/ferry/store"
)

// Limits on documents, so that one device or operator cannot make every
// stream and every read expensive.
const (
	MaxTargetPathBytes = 1024
	MaxConfigEntries   = 256
	MaxConfigKeyBytes  = 128
	MaxConfigValBytes  = 4096
	MaxTextBytes       = 1024 // report messages, error codes, agent versions
)

// InvalidError says which field of a request is wrong and why. Its message
// is safe to show to the caller.
type InvalidError struct {
	Field  string
	Reason string
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Reason }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

func validateDeviceID(id string) error {
	if !credentials.ValidDeviceID(id) {
		return invalid("device_id", "must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

// Validate checks a desired document.
func (d Document) Validate() error {
	if d.Bundle.IsZero() && len(d.Config) == 0 {
		return invalid("document", "names neither a bundle nor configuration")
	}
	if !d.Bundle.IsZero() {
		if err := validateBundle("document.bundle", d.Bundle); err != nil {
			return err
		}
	}
	if err := validateConfig("document.config", d.Config); err != nil {
		return err
	}
	return validateConsentPolicy(d.Consent)
}

func (s State) validate(field string) error {
	if !s.Bundle.IsZero() {
		if err := validateBundle(field+".bundle", s.Bundle); err != nil {
			return err
		}
	}
	return validateConfig(field+".config", s.Config)
}

func validateBundle(field string, b store.Bundle) error {
	if err := ValidateTargetPath(b.TargetPath); err != nil {
		return invalid(field+".target_path", "%v", err)
	}
	if b.Length == 0 {
		return invalid(field+".length", "must be positive")
	}
	if len(b.SHA256) != 64 || strings.ToLower(b.SHA256) != b.SHA256 {
		return invalid(field+".sha256", "must be 64 lowercase hex digits")
	}
	if _, err := hex.DecodeString(b.SHA256); err != nil {
		return invalid(field+".sha256", "must be 64 lowercase hex digits")
	}
	return nil
}

// ValidateTargetPath checks a TUF target path: relative, clean, slash
// separated, without "." or ".." elements, printable UTF-8.
func ValidateTargetPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("is empty")
	case len(p) > MaxTargetPathBytes:
		return fmt.Errorf("is longer than %d bytes", MaxTargetPathBytes)
	case !utf8.ValidString(p):
		return fmt.Errorf("is not UTF-8")
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }):
		return fmt.Errorf("contains control characters or backslashes")
	case strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../"):
		return fmt.Errorf("must be a clean relative path")
	}
	return nil
}

func validateConfig(field string, c map[string]string) error {
	if len(c) > MaxConfigEntries {
		return invalid(field, "has %d entries, at most %d allowed", len(c), MaxConfigEntries)
	}
	for k, v := range c {
		if k == "" || len(k) > MaxConfigKeyBytes || !utf8.ValidString(k) {
			return invalid(field, "keys must be 1 to %d bytes of UTF-8", MaxConfigKeyBytes)
		}
		if len(v) > MaxConfigValBytes || !utf8.ValidString(v) {
			return invalid(field+"."+k, "values must be at most %d bytes of UTF-8", MaxConfigValBytes)
		}
	}
	return nil
}

func validateText(field, s string) error {
	if len(s) > MaxTextBytes || !utf8.ValidString(s) {
		return invalid(field, "must be at most %d bytes of UTF-8", MaxTextBytes)
	}
	return nil
}
