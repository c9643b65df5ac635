package tuf

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/kms"
	"github.com/sigstore/sigstore/pkg/signature/kms/cliplugin"
	"github.com/sigstore/sigstore/pkg/signature/options"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// KMS keys: a key of the ring may live in a key management service. Its
// file in the ring (<role>-<key id prefix>.kms) holds only the key's
// reference, for example "awskms:///arn:…", "gcpkms://projects/…",
// "hashivault://name", or "<scheme>://…" for a sigstore KMS CLI plugin
// (an executable named sigstore-kms-<scheme> on PATH). sigstore's kms.Get
// resolves it: first the providers registered by imports (only main
// imports them), else the plugin.

// kmsFileExt is the extension of a key file holding a KMS reference.
const kmsFileExt = ".kms"

// OpenKMS returns a signer for the KMS key ref whose signatures go-tuf
// accepts: the key must be ECDSA P-256 or Ed25519 (go-tuf verifies ECDSA
// with SHA-256 and ASN.1 signatures, which is what sigstore's providers
// produce), and ctx bounds every call to the KMS.
func OpenKMS(ctx context.Context, ref string) (signature.Signer, error) {
	ref = strings.TrimSpace(ref)
	if !strings.Contains(ref, "://") {
		return nil, fmt.Errorf("KMS key %q: want a reference <scheme>://<key>", ref)
	}
	sv, err := kms.Get(ctx, ref, crypto.SHA256)
	if err != nil {
		var notFound *kms.ProviderNotFoundError
		if errors.As(err, &notFound) || errors.Is(err, exec.ErrNotFound) {
			scheme, _, _ := strings.Cut(ref, "://")
			return nil, fmt.Errorf("KMS key %s: no provider for %q in this ferryctl, and no plugin %s%s on PATH: %w",
				ref, scheme, cliplugin.PluginBinaryPrefix, scheme, err)
		}
		return nil, fmt.Errorf("KMS key %s: %w", ref, err)
	}
	pub, err := sv.PublicKey(options.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("KMS key %s: public key: %w", ref, err)
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("KMS key %s: ECDSA on %s; TUF's ecdsa-sha2-nistp256 wants P-256", ref, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("KMS key %s: a %T key; use ECDSA P-256 or Ed25519", ref, pub)
	}
	return &kmsSigner{ctx: ctx, ref: ref, sv: sv, pub: pub}, nil
}

// kmsSigner is a KMS signer with its public key read once, every call
// bound to the context it was opened with, and the KMS's last error kept
// (go-tuf's Metadata.Sign replaces it with a generic one; Sign puts it
// back).
type kmsSigner struct {
	ctx context.Context
	ref string
	sv  signature.Signer
	pub crypto.PublicKey

	mu      sync.Mutex
	lastErr error
}

func (s *kmsSigner) PublicKey(...signature.PublicKeyOption) (crypto.PublicKey, error) {
	return s.pub, nil
}

func (s *kmsSigner) SignMessage(message io.Reader, opts ...signature.SignOption) ([]byte, error) {
	sig, err := s.sv.SignMessage(message, append(opts, options.WithContext(s.ctx))...)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = nil
	if err != nil {
		s.lastErr = fmt.Errorf("KMS key %s: sign: %w", s.ref, err)
		return nil, s.lastErr
	}
	return sig, nil
}

func (s *kmsSigner) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// checkTUFSignature signs a probe document with s and verifies it the
// way a TUF client does, so that a key whose signatures go-tuf would
// refuse (an RSA key signing PKCS #1 v1.5, say) is refused when it is
// added, not when devices see it.
func checkTUFSignature(s signature.Signer) (*metadata.Key, error) {
	key, err := PublicKey(s)
	if err != nil {
		return nil, err
	}
	root := metadata.Root(time.Now().Add(time.Hour))
	if err := root.Signed.AddKey(key, metadata.TARGETS); err != nil {
		return nil, err
	}
	probe := NewTargets(1, time.Now().Add(time.Hour))
	if err := Sign(probe, s); err != nil {
		return nil, err
	}
	if err := root.VerifyDelegate(metadata.TARGETS, probe); err != nil {
		return nil, fmt.Errorf("a TUF client would refuse this key's signatures: %w", err)
	}
	return key, nil
}
