package tuf

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// GenerateKey creates an Ed25519 signing key.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	return priv, err
}

// EncryptKey returns priv as PEM, encrypted with passphrase (scrypt and
// NaCl secretbox, the "ENCRYPTED SIGSTORE PRIVATE KEY" format).
func EncryptKey(priv crypto.PrivateKey, passphrase []byte) ([]byte, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("an offline key needs a passphrase")
	}
	der, err := cryptoutils.MarshalPrivateKeyToEncryptedDER(priv, func(bool) ([]byte, error) { return passphrase, nil })
	if err != nil {
		return nil, fmt.Errorf("encrypt key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: string(cryptoutils.EncryptedSigstorePrivateKeyPEMType), Bytes: der}), nil
}

// WriteEncryptedKey writes priv to path, encrypted, readable by its owner
// only. It refuses to overwrite an existing file.
func WriteEncryptedKey(path string, priv crypto.PrivateKey, passphrase []byte) error {
	raw, err := EncryptKey(priv, passphrase)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(raw); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// LoadSigner reads a PEM private key (encrypted with passphrase, or plain
// PKCS #8 when passphrase is nil) and returns a signer for it. ECDSA keys
// sign with SHA-256; RSA keys with RSASSA-PSS, as TUF requires.
func LoadSigner(path string, passphrase []byte) (signature.Signer, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pf cryptoutils.PassFunc
	if passphrase != nil {
		pf = func(bool) ([]byte, error) { return passphrase, nil }
	}
	priv, err := cryptoutils.UnmarshalPEMToPrivateKey(raw, pf)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w (wrong passphrase?)", filepath.Base(path), err)
	}
	return NewSigner(priv)
}

// NewSigner returns the TUF-compatible signer for a private key.
func NewSigner(priv crypto.PrivateKey) (signature.Signer, error) {
	if _, ok := priv.(interface{ Public() crypto.PublicKey }); !ok {
		return nil, errors.New("not a private key")
	}
	return signature.LoadSigner(priv, crypto.SHA256)
}

// PublicKey returns the TUF key of a signer.
func PublicKey(s signature.Signer) (*metadata.Key, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return nil, err
	}
	return metadata.KeyFromPublicKey(pub)
}

// KeyID returns a TUF key's id.
func KeyID(k *metadata.Key) string {
	id, err := k.ID()
	if err != nil {
		// Only a key that cannot be encoded as JSON fails, which a key
		// built by KeyFromPublicKey or parsed from JSON cannot be.
		panic(err)
	}
	return id
}

// OnlineKeys are ferryd's snapshot and timestamp signers.
type OnlineKeys struct {
	Snapshot  signature.Signer
	Timestamp signature.Signer
}

// EnsureOnlineKeys loads ferryd's online keys from dir, creating them on
// first use. They are plain PKCS #8 PEM files readable by their owner only:
// ferryd signs snapshot and timestamp unattended.
func EnsureOnlineKeys(dir string) (OnlineKeys, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return OnlineKeys{}, err
	}
	load := func(role string) (signature.Signer, error) {
		path := filepath.Join(dir, role+".pem")
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			priv, err := GenerateKey()
			if err != nil {
				return nil, err
			}
			raw, err := cryptoutils.MarshalPrivateKeyToPEM(priv)
			if err != nil {
				return nil, err
			}
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return nil, fmt.Errorf("%s key: %w", role, err)
			}
			if _, err := f.Write(raw); err != nil {
				f.Close()
				return nil, err
			}
			if err := f.Close(); err != nil {
				return nil, err
			}
		}
		s, err := LoadSigner(path, nil)
		if err != nil {
			return nil, fmt.Errorf("%s key: %w", role, err)
		}
		return s, nil
	}
	var keys OnlineKeys
	var err error
	if keys.Snapshot, err = load(metadata.SNAPSHOT); err != nil {
		return OnlineKeys{}, err
	}
	if keys.Timestamp, err = load(metadata.TIMESTAMP); err != nil {
		return OnlineKeys{}, err
	}
	return keys, nil
}
