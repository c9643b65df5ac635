package tuf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// KeyRing is a release engineer's directory of offline keys:
// <dir>/<role>-<key id prefix>.pem, each encrypted with the passphrase.
// Retired keys move to <dir>/retired/.
type KeyRing struct {
	Dir        string
	Passphrase []byte
}

// Create makes a new key for role and stores it.
func (k KeyRing) Create(role string) (signature.Signer, error) {
	if err := os.MkdirAll(k.Dir, 0o700); err != nil {
		return nil, err
	}
	priv, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	s, err := NewSigner(priv)
	if err != nil {
		return nil, err
	}
	pub, err := PublicKey(s)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(k.Dir, role+"-"+KeyID(pub)[:16]+".pem")
	if err := WriteEncryptedKey(path, priv, k.Passphrase); err != nil {
		return nil, fmt.Errorf("write %s key: %w", role, err)
	}
	return s, nil
}

// CreateN makes n keys for role.
func (k KeyRing) CreateN(role string, n int) ([]signature.Signer, error) {
	out := make([]signature.Signer, 0, n)
	for range n {
		s, err := k.Create(role)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// Signers returns the signers of role whose key ids are in ids (all of the
// role's keys when ids is nil). Only the files named for those ids are
// decrypted (each decryption is a deliberately slow scrypt).
func (k KeyRing) Signers(role string, ids []string) ([]signature.Signer, error) {
	return k.signers(role, ids, 0)
}

func (k KeyRing) signers(role string, ids []string, limit int) ([]signature.Signer, error) {
	files, err := filepath.Glob(filepath.Join(k.Dir, role+"-*.pem"))
	if err != nil {
		return nil, err
	}
	var out []signature.Signer
	for _, f := range files {
		if limit > 0 && len(out) == limit {
			break
		}
		prefix := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), role+"-"), ".pem")
		if ids != nil && !hasPrefixIn(ids, prefix) {
			continue
		}
		s, err := LoadSigner(f, k.Passphrase)
		if err != nil {
			return nil, err
		}
		pub, err := PublicKey(s)
		if err != nil {
			return nil, err
		}
		if ids == nil || containsString(ids, KeyID(pub)) {
			out = append(out, s)
		}
	}
	return out, nil
}

// RoleSigners returns a threshold of the signers a root gives role from
// this key ring, and fails when it holds fewer.
func (k KeyRing) RoleSigners(root *metadata.Metadata[metadata.RootType], role string) ([]signature.Signer, error) {
	r := root.Signed.Roles[role]
	if r == nil {
		return nil, fmt.Errorf("the root has no role %q", role)
	}
	s, err := k.signers(role, r.KeyIDs, r.Threshold)
	if err != nil {
		return nil, err
	}
	if len(s) < r.Threshold {
		return nil, fmt.Errorf("%s: %d of the %d keys needed are in %s", role, len(s), r.Threshold, k.Dir)
	}
	return s, nil
}

// Retire moves the key files of role whose ids are not in keep to
// <dir>/retired.
func (k KeyRing) Retire(role string, keep []string) error {
	files, err := filepath.Glob(filepath.Join(k.Dir, role+"-*.pem"))
	if err != nil {
		return err
	}
	retired := filepath.Join(k.Dir, "retired")
	if err := os.MkdirAll(retired, 0o700); err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		prefix := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), role+"-"), ".pem")
		if !hasPrefixIn(keep, prefix) {
			errs = append(errs, os.Rename(f, filepath.Join(retired, filepath.Base(f))))
		}
	}
	return errors.Join(errs...)
}

// hasPrefixIn reports whether some id starts with prefix (key files are
// named by a prefix of their key id).
func hasPrefixIn(ids []string, prefix string) bool {
	for _, id := range ids {
		if prefix != "" && strings.HasPrefix(id, prefix) {
			return true
		}
	}
	return false
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
