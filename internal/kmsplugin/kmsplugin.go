// Package kmsplugin is a software key store served through sigstore's KMS
// CLI plugin protocol, for tests: ECDSA P-256 keys kept as PEM files in a
// directory. It lets the KMS code paths run against a real plugin process
// without a cloud account. Never use it for real keys: they are stored in
// the clear.
package kmsplugin

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// DirEnv names the environment variable holding the key store directory.
const DirEnv = "FERRY_TEST_KMS_DIR"

// Algorithm is the only key algorithm the store creates.
const Algorithm = "ecdsa-p256"

// Store is one key of the store, named by the plugin's key resource id
// (the part of "ferrytest://NAME" after the scheme).
type Store struct {
	Dir      string
	Name     string
	HashFunc crypto.Hash
}

func (s Store) path() (string, error) {
	if s.Dir == "" {
		return "", fmt.Errorf("no key store: set %s", DirEnv)
	}
	if s.Name == "" || strings.ContainsAny(s.Name, `/\`) || strings.HasPrefix(s.Name, ".") {
		return "", fmt.Errorf("key name %q: want a plain name", s.Name)
	}
	return filepath.Join(s.Dir, s.Name+".pem"), nil
}

func (s Store) signer() (*signature.ECDSASignerVerifier, error) {
	p, err := s.path()
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("key %s does not exist", s.Name)
	}
	if err != nil {
		return nil, err
	}
	priv, err := cryptoutils.UnmarshalPEMToPrivateKey(raw, cryptoutils.SkipPassword)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", s.Name, err)
	}
	ec, ok := priv.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key %s: not an ECDSA key", s.Name)
	}
	h := s.HashFunc
	if h == 0 {
		h = crypto.SHA256
	}
	return signature.LoadECDSASignerVerifier(ec, h)
}

// CreateKey makes the key (ECDSA P-256); it refuses to replace one.
func (s Store) CreateKey(_ context.Context, algorithm string) (crypto.PublicKey, error) {
	if algorithm != "" && algorithm != Algorithm {
		return nil, fmt.Errorf("algorithm %q: only %s", algorithm, Algorithm)
	}
	p, err := s.path()
	if err != nil {
		return nil, err
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	raw, err := cryptoutils.MarshalPrivateKeyToPEM(priv)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create key %s: %w", s.Name, err)
	}
	if _, err := f.Write(raw); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	return priv.Public(), nil
}

// PublicKey returns the key's public key.
func (s Store) PublicKey(...signature.PublicKeyOption) (crypto.PublicKey, error) {
	sv, err := s.signer()
	if err != nil {
		return nil, err
	}
	return sv.PublicKey()
}

// SignMessage signs message (hashed with HashFunc; ASN.1 ECDSA).
func (s Store) SignMessage(message io.Reader, opts ...signature.SignOption) ([]byte, error) {
	sv, err := s.signer()
	if err != nil {
		return nil, err
	}
	return sv.SignMessage(message, opts...)
}

// VerifySignature checks a signature made by SignMessage.
func (s Store) VerifySignature(sig, message io.Reader, opts ...signature.VerifyOption) error {
	sv, err := s.signer()
	if err != nil {
		return err
	}
	return sv.VerifySignature(sig, message, opts...)
}

// CryptoSigner is not part of the plugin protocol (the client wraps its
// own calls).
func (s Store) CryptoSigner(context.Context, func(error)) (crypto.Signer, crypto.SignerOpts, error) {
	return nil, nil, errors.New("CryptoSigner is not served by a plugin")
}

// SupportedAlgorithms lists Algorithm.
func (s Store) SupportedAlgorithms() []string { return []string{Algorithm} }

// DefaultAlgorithm is Algorithm.
func (s Store) DefaultAlgorithm() string { return Algorithm }
