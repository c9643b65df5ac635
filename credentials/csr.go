package credentials

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
)

// Errors of the credential broker, beside ErrUnauthenticated. Callers test
// them with errors.Is.
var (
	// ErrInvalid: a request is malformed (a CSR that does not parse, a
	// weak key, a bad device id).
	ErrInvalid = errors.New("invalid request")
	// ErrForbidden: the caller is known but may not have what it asked
	// for (a revoked device, a token for another target or certificate).
	ErrForbidden = errors.New("forbidden")
	// ErrRevoked: the device is revoked. It is also ErrForbidden.
	ErrRevoked = fmt.Errorf("%w: device is revoked", ErrForbidden)
	// ErrNoIssuer: this ferryd holds no device CA key, so it cannot issue
	// certificates.
	ErrNoIssuer = errors.New("this server does not issue device certificates")
	// ErrExists: the device is already enrolled or revoked.
	ErrExists = errors.New("already exists")
)

// MaxCSRBytes bounds the CSRs ParseCSR accepts.
const MaxCSRBytes = 8 << 10

// ParseCSR parses a DER PKCS #10 certificate signing request from an
// untrusted device and checks its self-signature and key: ECDSA P-256 or
// P-384, Ed25519, or RSA of 2048 to 8192 bits. Only the public key is used;
// names in the request are ignored, since the identity comes from the
// enrollment token or the presented certificate.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: a certificate signing request is required", ErrInvalid)
	}
	if len(der) > MaxCSRBytes {
		return nil, fmt.Errorf("%w: certificate signing request of %d bytes is over %d", ErrInvalid, len(der), MaxCSRBytes)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: certificate signing request: %v", ErrInvalid, err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: certificate signing request signature: %v", ErrInvalid, err)
	}
	return csr, nil
}

func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("%w: ECDSA keys must be P-256 or P-384", ErrInvalid)
	case ed25519.PublicKey:
		return nil
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n >= 2048 && n <= 8192 {
			return nil
		}
		return fmt.Errorf("%w: RSA keys must have 2048 to 8192 bits", ErrInvalid)
	}
	return fmt.Errorf("%w: unsupported key type %T", ErrInvalid, pub)
}
