package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Credentials are a device's key and its current certificate chain. The
// chain changes on renewal; Credentials is safe for concurrent use.
type Credentials struct {
	key crypto.Signer

	mu    sync.RWMutex
	chain [][]byte
	leaf  *x509.Certificate
}

// NewKey returns a new ECDSA P-256 device key.
func NewKey() (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// NewCredentials pairs key with a certificate chain (DER, leaf first).
func NewCredentials(key crypto.Signer, chain [][]byte) (*Credentials, error) {
	c := &Credentials{key: key}
	if err := c.SetChain(chain); err != nil {
		return nil, err
	}
	return c, nil
}

// SetChain replaces the certificate chain; its leaf must be for the key.
func (c *Credentials) SetChain(chain [][]byte) error {
	if len(chain) == 0 {
		return errors.New("empty certificate chain")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return fmt.Errorf("device certificate: %w", err)
	}
	pub, ok := c.key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return errors.New("the device certificate is not for the device key")
	}
	c.mu.Lock()
	c.chain, c.leaf = chain, leaf
	c.mu.Unlock()
	return nil
}

// Key is the device key.
func (c *Credentials) Key() crypto.Signer { return c.key }

// Leaf is the current certificate.
func (c *Credentials) Leaf() *x509.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.leaf
}

// Chain is the current chain, DER, leaf first.
func (c *Credentials) Chain() [][]byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.chain
}

// TLSCertificate is the current certificate for a TLS client.
func (c *Credentials) TLSCertificate() *tls.Certificate {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return &tls.Certificate{Certificate: c.chain, PrivateKey: c.key, Leaf: c.leaf}
}

// RenewAt is when the certificate should be renewed: once fraction of its
// lifetime has passed.
func (c *Credentials) RenewAt(fraction float64) time.Time {
	leaf := c.Leaf()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(time.Duration(float64(life) * fraction))
}

// CSR returns a PKCS #10 request (DER) for the key. The server ignores its
// names: identity comes from the enrollment token or certificate.
func CSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ferry-device"}}, key)
	if err != nil {
		return nil, fmt.Errorf("certificate signing request: %w", err)
	}
	return der, nil
}

// Enroller trades a CSR for a certificate chain at enrollment: with a
// one-time token, or with the factory certificate when token is empty.
type Enroller interface {
	Enroll(ctx context.Context, csr []byte, token string) ([][]byte, error)
}

// File names in a credentials directory.
const (
	KeyFile  = "device.key"
	CertFile = "device.pem"
)

// LoadOrEnroll reads the credentials in dir, or, when there are none,
// creates a key, enrolls with enroller and token, and writes them.
func LoadOrEnroll(ctx context.Context, dir string, enroller Enroller, token string) (*Credentials, error) {
	keyPath, certPath := filepath.Join(dir, KeyFile), filepath.Join(dir, CertFile)
	if _, err := os.Stat(certPath); err == nil {
		return LoadCredentials(keyPath, certPath)
	}
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := CSR(key)
	if err != nil {
		return nil, err
	}
	chain, err := enroller.Enroll(ctx, csr, token)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	c, err := NewCredentials(key, chain)
	if err != nil {
		return nil, err
	}
	if err := makeDir(dir, 0o700); err != nil {
		return nil, err
	}
	if err := c.Save(keyPath, certPath); err != nil {
		return nil, err
	}
	return c, nil
}

// LoadCredentials reads a PEM key (PKCS #8 or SEC 1) and chain.
func LoadCredentials(keyPath, certPath string) (*Credentials, error) {
	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("device credentials: %w", err)
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("device key cannot sign")
	}
	return NewCredentials(key, pair.Certificate)
}

// Save writes the key and chain as PEM, each atomically.
func (c *Credentials) Save(keyPath, certPath string) error {
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return fmt.Errorf("device key: %w", err)
	}
	if err := writeFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	var certs []byte
	for _, d := range c.Chain() {
		certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
	}
	return writeFileAtomic(certPath, certs, 0o644)
}
