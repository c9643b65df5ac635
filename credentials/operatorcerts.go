package credentials

import (
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"time"
)

// Operator certificates: a client certificate from the operator CA names
// the operator in its subject common name and the role in its first
// organizational unit. The operator CA must not be the device CA.

// IssueOperator issues an operator client certificate.
func (ca *CA) IssueOperator(name string, role Role, pub crypto.PublicKey, ttl time.Duration, now time.Time) (*x509.Certificate, error) {
	if name == "" || !role.Valid() {
		return nil, fmt.Errorf("operator certificate needs a name and a role (viewer, operator, release, auditor, admin)")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, OrganizationalUnit: []string{string(role)}, Organization: []string{"Ferry operators"}},
		NotBefore:   now.Add(-5 * time.Minute),
		NotAfter:    now.Add(ttl),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return sign(tmpl, ca.Cert, pub, ca.Key)
}

// OperatorCerts authenticates operator client certificates. It is
// immutable and safe for concurrent use.
type OperatorCerts struct {
	roots *x509.CertPool
	now   func() time.Time
}

// NewOperatorCerts trusts the given operator CA certificates. now is the
// clock (time.Now when nil).
func NewOperatorCerts(cas []*x509.Certificate, now func() time.Time) *OperatorCerts {
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	if now == nil {
		now = time.Now
	}
	return &OperatorCerts{roots: pool, now: now}
}

// Authenticate returns the operator a certificate chain (leaf first) names.
// The caller must have checked possession of the leaf's key (a TLS
// handshake does).
func (o *OperatorCerts) Authenticate(chain []*x509.Certificate) (Operator, error) {
	if o == nil || len(chain) == 0 {
		return Operator{}, fmt.Errorf("%w: no operator certificate", ErrUnauthenticated)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	leaf := chain[0]
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots: o.roots, Intermediates: inter, CurrentTime: o.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return Operator{}, fmt.Errorf("%w: operator certificate: %v", ErrUnauthenticated, err)
	}
	if len(leaf.Subject.OrganizationalUnit) == 0 || leaf.Subject.CommonName == "" {
		return Operator{}, fmt.Errorf("%w: operator certificate names no operator or role", ErrUnauthenticated)
	}
	role := Role(leaf.Subject.OrganizationalUnit[0])
	if !role.Valid() {
		return Operator{}, fmt.Errorf("%w: operator certificate has unknown role %q", ErrUnauthenticated, role)
	}
	return Operator{Name: leaf.Subject.CommonName, Role: role}, nil
}
