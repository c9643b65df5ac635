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
// role's keys when ids is nil).
func (k KeyRing) Signers(role string, ids []string) ([]signature.Signer, error) {
	files, err := filepath.Glob(filepath.Join(k.Dir, role+"-*.pem"))
	if err != nil {
		return nil, err
	}
	var out []signature.Signer
	for _, f := range files {
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

// RoleSigners returns the signers a root gives role that this key ring
// holds, and fails when they are fewer than the role's threshold.
func (k KeyRing) RoleSigners(root *metadata.Metadata[metadata.RootType], role string) ([]signature.Signer, error) {
	r := root.Signed.Roles[role]
	if r == nil {
		return nil, fmt.Errorf("the root has no role %q", role)
	}
	s, err := k.Signers(role, r.KeyIDs)
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
		keepIt := false
		for _, id := range keep {
			if strings.HasPrefix(id, prefix) {
				keepIt = true
			}
		}
		if !keepIt {
			errs = append(errs, os.Rename(f, filepath.Join(retired, filepath.Base(f))))
		}
	}
	return errors.Join(errs...)
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
