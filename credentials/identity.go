// Package credentials is Ferry's identity authority: device identities in
// X.509 certificates, the development PKI ferryd creates on first start, and
// operator credentials with their roles.
//
// A device's identity is the URI SAN of its certificate,
// spiffe://<trust-domain>/device/<id>; it never comes from a message field.
package credentials

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
)

// ErrUnauthenticated: a presented credential does not identify a device or
// an operator.
var ErrUnauthenticated = errors.New("unauthenticated")

var deviceIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

var trustDomainPattern = regexp.MustCompile(`^[a-z0-9._-]{1,255}$`)

// ValidTrustDomain reports whether td is a SPIFFE trust domain name:
// lowercase letters, digits, '.', '_' and '-'.
func ValidTrustDomain(td string) bool { return trustDomainPattern.MatchString(td) }

// ValidDeviceID reports whether id is a well-formed device id: 1 to 128
// letters, digits, '.', '_' or '-', starting with a letter or digit.
func ValidDeviceID(id string) bool { return deviceIDPattern.MatchString(id) }

// DeviceURI returns the SPIFFE ID of a device.
func DeviceURI(trustDomain, id string) *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/device/" + id}
}

// ParseDeviceURI returns the device id in a SPIFFE ID of the trust domain.
func ParseDeviceURI(trustDomain, uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("%w: SPIFFE ID: %v", ErrUnauthenticated, err)
	}
	return deviceIDFromURL(trustDomain, u)
}

func deviceIDFromURL(trustDomain string, u *url.URL) (string, error) {
	if u.Scheme != "spiffe" || u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return "", fmt.Errorf("%w: %q is not a SPIFFE ID", ErrUnauthenticated, u.Redacted())
	}
	if u.Host != trustDomain {
		return "", fmt.Errorf("%w: trust domain %q, want %q", ErrUnauthenticated, u.Host, trustDomain)
	}
	const prefix = "/device/"
	if len(u.Path) <= len(prefix) || u.Path[:len(prefix)] != prefix || u.RawPath != "" {
		return "", fmt.Errorf("%w: %q is not a device identity", ErrUnauthenticated, u.Path)
	}
	id := u.Path[len(prefix):]
	if !ValidDeviceID(id) {
		return "", fmt.Errorf("%w: malformed device id %q", ErrUnauthenticated, id)
	}
	return id, nil
}

// DeviceID returns the identity of a device certificate whose chain has
// already been verified: exactly one URI SAN, a device SPIFFE ID of the
// trust domain.
func DeviceID(trustDomain string, cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: no client certificate", ErrUnauthenticated)
	}
	if len(cert.URIs) != 1 {
		return "", fmt.Errorf("%w: certificate has %d URI SANs, want 1", ErrUnauthenticated, len(cert.URIs))
	}
	return deviceIDFromURL(trustDomain, cert.URIs[0])
}
