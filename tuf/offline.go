package tuf

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// This file is the release engineer's side: building and signing root and
// targets metadata with offline keys. ferryctl wires it; ferryd never calls
// it with a root or targets key.

// Default lifetimes of offline-signed metadata.
const (
	DefaultRootExpiry    = 365 * 24 * time.Hour
	DefaultTargetsExpiry = 90 * 24 * time.Hour
)

// RoleKeys are the keys and threshold of one role.
type RoleKeys struct {
	Keys      []*metadata.Key
	Threshold int
}

func (rk RoleKeys) check(role string) error {
	if len(rk.Keys) == 0 {
		return fmt.Errorf("%s: at least one key is required", role)
	}
	if rk.Threshold < 1 || rk.Threshold > len(rk.Keys) {
		return fmt.Errorf("%s: threshold %d with %d keys", role, rk.Threshold, len(rk.Keys))
	}
	return nil
}

// RootParams describe a root.
type RootParams struct {
	Version   int64
	Expires   time.Time
	Root      RoleKeys
	Targets   RoleKeys
	Snapshot  *metadata.Key // ferryd's online keys (GetOnlineKeys)
	Timestamp *metadata.Key
}

// NewRoot builds an unsigned root with consistent snapshots.
func NewRoot(p RootParams) (*metadata.Metadata[metadata.RootType], error) {
	if err := errors.Join(p.Root.check("root"), p.Targets.check("targets")); err != nil {
		return nil, err
	}
	if p.Snapshot == nil || p.Timestamp == nil {
		return nil, errors.New("the online snapshot and timestamp keys are required")
	}
	md := metadata.Root(p.Expires.UTC().Truncate(time.Second))
	md.Signed.Version = max(p.Version, 1)
	md.Signed.ConsistentSnapshot = true
	md.Signed.Keys = map[string]*metadata.Key{}
	for _, name := range metadata.TOP_LEVEL_ROLE_NAMES {
		md.Signed.Roles[name] = &metadata.Role{KeyIDs: []string{}, Threshold: 1}
	}
	add := func(role string, keys ...*metadata.Key) error {
		for _, k := range keys {
			if err := md.Signed.AddKey(k, role); err != nil {
				return err
			}
		}
		return nil
	}
	if err := errors.Join(add(metadata.ROOT, p.Root.Keys...), add(metadata.TARGETS, p.Targets.Keys...),
		add(metadata.SNAPSHOT, p.Snapshot), add(metadata.TIMESTAMP, p.Timestamp)); err != nil {
		return nil, err
	}
	md.Signed.Roles[metadata.ROOT].Threshold = p.Root.Threshold
	md.Signed.Roles[metadata.TARGETS].Threshold = p.Targets.Threshold
	return md, nil
}

// RootKeysOf returns the keys and threshold a root gives role.
func RootKeysOf(root *metadata.Metadata[metadata.RootType], role string) RoleKeys {
	r := root.Signed.Roles[role]
	if r == nil {
		return RoleKeys{}
	}
	rk := RoleKeys{Threshold: r.Threshold}
	for _, id := range r.KeyIDs {
		if k := root.Signed.Keys[id]; k != nil {
			rk.Keys = append(rk.Keys, k)
		}
	}
	return rk
}

// NextRoot returns the root that follows cur, with role's keys replaced
// by keys, unsigned. Sign it with a threshold of cur's root keys and of
// its own (for a root key rotation, both old and new). For snapshot and
// timestamp, keys is ferryd's new online key.
func NextRoot(cur *metadata.Metadata[metadata.RootType], role string, keys RoleKeys, expires time.Time) (*metadata.Metadata[metadata.RootType], error) {
	p := RootParams{
		Version:   cur.Signed.Version + 1,
		Expires:   expires,
		Root:      RootKeysOf(cur, metadata.ROOT),
		Targets:   RootKeysOf(cur, metadata.TARGETS),
		Snapshot:  firstKey(cur, metadata.SNAPSHOT),
		Timestamp: firstKey(cur, metadata.TIMESTAMP),
	}
	switch role {
	case metadata.ROOT:
		p.Root = keys
	case metadata.TARGETS:
		p.Targets = keys
	case metadata.SNAPSHOT, metadata.TIMESTAMP:
		if len(keys.Keys) != 1 || keys.Threshold != 1 {
			return nil, fmt.Errorf("%s: ferryd signs with one online key, threshold 1", role)
		}
		if role == metadata.SNAPSHOT {
			p.Snapshot = keys.Keys[0]
		} else {
			p.Timestamp = keys.Keys[0]
		}
	default:
		return nil, fmt.Errorf("role %q: not a top-level role", role)
	}
	return NewRoot(p)
}

func firstKey(root *metadata.Metadata[metadata.RootType], role string) *metadata.Key {
	if rk := RootKeysOf(root, role); len(rk.Keys) > 0 {
		return rk.Keys[0]
	}
	return nil
}

// Sign adds a signature by each signer to md, replacing any earlier
// signature by the same key.
func Sign[T metadata.Roles](md *metadata.Metadata[T], signers ...signature.Signer) error {
	for _, s := range signers {
		k, err := PublicKey(s)
		if err != nil {
			return err
		}
		id := KeyID(k)
		md.Signatures = slices.DeleteFunc(md.Signatures, func(sig metadata.Signature) bool { return sig.KeyID == id })
		if _, err := md.Sign(s); err != nil {
			if ks, ok := s.(*kmsSigner); ok && ks.err() != nil {
				// go-tuf reports only "problem signing metadata".
				return fmt.Errorf("sign: %w: %w", err, ks.err())
			}
			return fmt.Errorf("sign: %w", err)
		}
	}
	return nil
}

// NewTargets builds an empty, unsigned targets document.
func NewTargets(version int64, expires time.Time) *metadata.Metadata[metadata.TargetsType] {
	md := metadata.Targets(expires.UTC().Truncate(time.Second))
	md.Signed.Version = version
	return md
}

// DelegateHashBins makes top delegate every target path to one of
// 2^bitLength hash bins ("<prefix>-<hex>"), all signed by keys. This keeps
// each metadata file small in a repository with very many targets.
func DelegateHashBins(top *metadata.Metadata[metadata.TargetsType], prefix string, bitLength int, keys RoleKeys) error {
	if err := keys.check("bins"); err != nil {
		return err
	}
	if bitLength < 1 || bitLength > 16 || !ValidRoleName(prefix) {
		return fmt.Errorf("hash bins: want 1 to 16 bits and a valid name prefix")
	}
	ids := make([]string, 0, len(keys.Keys))
	top.Signed.Delegations = &metadata.Delegations{Keys: map[string]*metadata.Key{}}
	for _, k := range keys.Keys {
		id := KeyID(k)
		top.Signed.Delegations.Keys[id] = k
		ids = append(ids, id)
	}
	top.Signed.Delegations.SuccinctRoles = &metadata.SuccinctRoles{
		KeyIDs: ids, Threshold: keys.Threshold, BitLength: bitLength, NamePrefix: prefix,
	}
	return nil
}

// DelegateRole makes top delegate the target paths matching patterns (TUF
// shell-style, "camera/*/*") to a named role signed by keys, for example
// one per product line. It replaces a delegation of the same name.
func DelegateRole(top *metadata.Metadata[metadata.TargetsType], name string, patterns []string, keys RoleKeys) error {
	if err := keys.check(name); err != nil {
		return err
	}
	if !ValidRoleName(name) || name == metadata.TARGETS {
		return fmt.Errorf("role name %q is not allowed", name)
	}
	d := top.Signed.Delegations
	if d == nil {
		d = &metadata.Delegations{Keys: map[string]*metadata.Key{}}
		top.Signed.Delegations = d
	}
	if d.SuccinctRoles != nil {
		return errors.New("this targets role delegates to hash bins; named roles cannot be added beside them")
	}
	dr := metadata.DelegatedRole{Name: name, Threshold: keys.Threshold, Paths: patterns, Terminating: true}
	for _, k := range keys.Keys {
		id := KeyID(k)
		d.Keys[id] = k
		dr.KeyIDs = append(dr.KeyIDs, id)
	}
	d.Roles = slices.DeleteFunc(d.Roles, func(r metadata.DelegatedRole) bool { return r.Name == name })
	d.Roles = append(d.Roles, dr)
	return nil
}

// RoleFor returns the targets role that holds path under top's
// delegations: the first delegated role whose paths match, or "targets".
func RoleFor(top *metadata.Metadata[metadata.TargetsType], path string) string {
	if top.Signed.Delegations != nil {
		if rs := top.Signed.Delegations.GetRolesForTarget(path); len(rs) > 0 {
			return rs[0].Name
		}
	}
	return metadata.TARGETS
}

// DelegatedRoles returns the names of every role top delegates to.
func DelegatedRoles(top *metadata.Metadata[metadata.TargetsType]) []string {
	d := top.Signed.Delegations
	if d == nil {
		return nil
	}
	if d.SuccinctRoles != nil {
		return d.SuccinctRoles.GetRoles()
	}
	var out []string
	for _, r := range d.Roles {
		out = append(out, r.Name)
	}
	return out
}
