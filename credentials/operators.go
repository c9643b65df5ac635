package credentials

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

// Role is what an operator may do. Roles are not nested, except that every
// role may read and admin may do everything.
type Role string

// The operator roles.
const (
	RoleViewer   Role = "viewer"   // read the fleet and the repository
	RoleOperator Role = "operator" // steer the fleet: desired state, rollouts
	RoleRelease  Role = "release"  // publish bundles
	RoleAdmin    Role = "admin"    // everything, including devices and keys
	RoleAuditor  Role = "auditor"  // read the fleet and the audit trail
)

// Valid reports whether r is one of the roles.
func (r Role) Valid() bool {
	switch r {
	case RoleViewer, RoleOperator, RoleRelease, RoleAdmin, RoleAuditor:
		return true
	}
	return false
}

// Allows reports whether an operator with role r may call what needs role
// need.
func (r Role) Allows(need Role) bool {
	return r == RoleAdmin || need == RoleViewer && r.Valid() || r == need
}

// Operator is an authenticated back-office caller.
type Operator struct {
	Name string
	Role Role
}

// OperatorKey is one entry of the operator keys file. Keys are stored as
// SHA-256 hashes: they are 256-bit random strings, so a slow hash adds
// nothing, and the file reveals no usable key.
type OperatorKey struct {
	Name      string `json:"name"`
	Role      Role   `json:"role"`
	KeySHA256 string `json:"key_sha256"`
}

// apiKeyPrefix marks Ferry API keys, so that secret scanners can find them.
const apiKeyPrefix = "ferry_"

// NewAPIKey returns a new random API key.
func NewAPIKey() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return apiKeyPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// HashAPIKey returns the stored form of an API key.
func HashAPIKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// WriteOperatorKeys writes the operator keys file.
func WriteOperatorKeys(path string, keys []OperatorKey) error {
	raw, err := json.MarshalIndent(keys, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(raw, '\n'), 0o600)
}

// OperatorKeys authenticates API keys. It is immutable and safe for
// concurrent use.
type OperatorKeys struct {
	byHash map[string]Operator
}

// LoadOperatorKeys reads an operator keys file.
func LoadOperatorKeys(path string) (*OperatorKeys, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys []OperatorKey
	if err := json.Unmarshal(raw, &keys); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return NewOperatorKeys(keys)
}

// NewOperatorKeys checks the entries and indexes them by hash.
func NewOperatorKeys(keys []OperatorKey) (*OperatorKeys, error) {
	k := &OperatorKeys{byHash: make(map[string]Operator, len(keys))}
	for _, e := range keys {
		if e.Name == "" || !e.Role.Valid() {
			return nil, fmt.Errorf("operator key %q: name and a role (viewer, operator, release, auditor, admin) are required", e.Name)
		}
		if h, err := hex.DecodeString(e.KeySHA256); err != nil || len(h) != sha256.Size {
			return nil, fmt.Errorf("operator key %q: key_sha256 must be 64 hex digits", e.Name)
		}
		k.byHash[strings.ToLower(e.KeySHA256)] = Operator{Name: e.Name, Role: e.Role}
	}
	return k, nil
}

// LooksLikeAPIKey reports whether a bearer credential claims to be a Ferry
// API key (it has the API key prefix), as opposed to a download token (a
// JWT) or anything else. It says nothing about whether the key is valid.
func LooksLikeAPIKey(s string) bool { return strings.HasPrefix(s, apiKeyPrefix) }

// Authenticate returns the operator an API key belongs to.
func (k *OperatorKeys) Authenticate(key string) (Operator, error) {
	if !strings.HasPrefix(key, apiKeyPrefix) {
		return Operator{}, fmt.Errorf("%w: not a Ferry API key", ErrUnauthenticated)
	}
	op, ok := k.byHash[HashAPIKey(key)]
	if !ok {
		return Operator{}, fmt.Errorf("%w: unknown API key", ErrUnauthenticated)
	}
	return op, nil
}
