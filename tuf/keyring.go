package tuf

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// KeyRing is a release engineer's directory of offline keys:
// <dir>/<role>-<key id prefix>.pem, each encrypted with the passphrase,
// or <dir>/<role>-<key id prefix>.kms, holding the reference of a key in
// a KMS (see OpenKMS). Retired keys move to <dir>/retired/.
type KeyRing struct {
	Dir string
	// Passphrase of the PEM keys; when nil, PassphraseFunc is asked the
	// first time a PEM key is created or read (a ring of KMS keys only
	// never asks).
	Passphrase     []byte
	PassphraseFunc func() ([]byte, error)
}

func (k KeyRing) passphrase() ([]byte, error) {
	if k.Passphrase != nil || k.PassphraseFunc == nil {
		return k.Passphrase, nil
	}
	p, err := k.PassphraseFunc()
	if err != nil {
		return nil, fmt.Errorf("passphrase of the offline keys: %w", err)
	}
	return p, nil
}

// keyFileExts are the extensions of the ring's key files.
var keyFileExts = []string{".pem", kmsFileExt}

// keyFiles returns the key files of role, sorted (PEM first).
func (k KeyRing) keyFiles(role string) ([]string, error) {
	var out []string
	for _, ext := range keyFileExts {
		files, err := filepath.Glob(filepath.Join(k.Dir, role+"-*"+ext))
		if err != nil {
			return nil, err
		}
		out = append(out, files...)
	}
	return out, nil
}

// keyFilePrefix returns the key id prefix a key file of role is named by.
func keyFilePrefix(role, file string) string {
	base := filepath.Base(file)
	return strings.TrimSuffix(strings.TrimPrefix(base, role+"-"), filepath.Ext(base))
}

// Create makes a new key for role and stores it.
func (k KeyRing) Create(role string) (signature.Signer, error) {
	if err := os.MkdirAll(k.Dir, 0o700); err != nil {
		return nil, err
	}
	pass, err := k.passphrase()
	if err != nil {
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
	if err := WriteEncryptedKey(path, priv, pass); err != nil {
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

// AddKMS adds the KMS key ref to role: it reads the key's public key
// from the KMS, checks that a TUF client accepts its signatures (one
// probe signature), and records the reference in
// <dir>/<role>-<key id prefix>.kms (a key already recorded there stays).
func (k KeyRing) AddKMS(ctx context.Context, role, ref string) (signature.Signer, error) {
	s, err := OpenKMS(ctx, ref)
	if err != nil {
		return nil, err
	}
	key, err := checkTUFSignature(s)
	if err != nil {
		return nil, fmt.Errorf("KMS key %s: %w", ref, err)
	}
	if err := os.MkdirAll(k.Dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(k.Dir, role+"-"+KeyID(key)[:16]+kmsFileExt)
	if raw, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(raw)) == strings.TrimSpace(ref) {
		return s, nil // already in the ring (a rotation that keeps it)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("record %s KMS key: %w", role, err)
	}
	if _, err := f.WriteString(strings.TrimSpace(ref) + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("record %s KMS key: %w", role, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("record %s KMS key: %w", role, err)
	}
	return s, nil
}

// AddKMSN adds each of the KMS keys refs to role.
func (k KeyRing) AddKMSN(ctx context.Context, role string, refs []string) ([]signature.Signer, error) {
	out := make([]signature.Signer, 0, len(refs))
	for _, ref := range refs {
		s, err := k.AddKMS(ctx, role, ref)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// loadSigner opens the signer of one key file: a PEM key decrypted with
// the passphrase, or the KMS key a .kms file refers to.
func (k KeyRing) loadSigner(ctx context.Context, file string) (signature.Signer, error) {
	if filepath.Ext(file) == kmsFileExt {
		raw, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		s, err := OpenKMS(ctx, string(raw))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(file), err)
		}
		return s, nil
	}
	pass, err := k.passphrase()
	if err != nil {
		return nil, err
	}
	return LoadSigner(file, pass)
}

// Signers returns the signers of role whose key ids are in ids (all of the
// role's keys when ids is nil). Only the files named for those ids are
// opened (each PEM decryption is a deliberately slow scrypt; each KMS key
// a call to the KMS).
func (k KeyRing) Signers(ctx context.Context, role string, ids []string) ([]signature.Signer, error) {
	return k.signers(ctx, role, ids, 0)
}

func (k KeyRing) signers(ctx context.Context, role string, ids []string, limit int) ([]signature.Signer, error) {
	files, err := k.keyFiles(role)
	if err != nil {
		return nil, err
	}
	var out []signature.Signer
	for _, f := range files {
		if limit > 0 && len(out) == limit {
			break
		}
		if ids != nil && !hasPrefixIn(ids, keyFilePrefix(role, f)) {
			continue
		}
		s, err := k.loadSigner(ctx, f)
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
func (k KeyRing) RoleSigners(ctx context.Context, root *metadata.Metadata[metadata.RootType], role string) ([]signature.Signer, error) {
	r := root.Signed.Roles[role]
	if r == nil {
		return nil, fmt.Errorf("the root has no role %q", role)
	}
	s, err := k.signers(ctx, role, r.KeyIDs, r.Threshold)
	if err != nil {
		return nil, err
	}
	if len(s) < r.Threshold {
		return nil, fmt.Errorf("%s: %d of the %d keys needed are in %s", role, len(s), r.Threshold, k.Dir)
	}
	return s, nil
}

// Retire moves the key files of role (PEM keys and KMS references) whose
// ids are not in keep to <dir>/retired. The KMS keys themselves are left
// alone: disabling them is the KMS's business.
func (k KeyRing) Retire(role string, keep []string) error {
	files, err := k.keyFiles(role)
	if err != nil {
		return err
	}
	retired := filepath.Join(k.Dir, "retired")
	if err := os.MkdirAll(retired, 0o700); err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		if !hasPrefixIn(keep, keyFilePrefix(role, f)) {
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
