package tuf

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// PublishRoot verifies and stores a new root. The first root (version 1)
// must be signed by a threshold of its own root keys; each later one by a
// threshold of the current root's keys and of its own, with the version
// one higher. Snapshot and timestamp roles must name ferryd's online keys
// with threshold 1, and no root or targets role may use them.
func (r *Repository) PublishRoot(ctx context.Context, data []byte) (Versions, error) {
	unlock, err := r.lockWrite(ctx)
	if err != nil {
		return Versions{}, err
	}
	defer unlock()
	cur, err := r.sync(ctx)
	if err != nil {
		return Versions{}, err
	}

	if len(data) > MaxRootBytes {
		return Versions{}, invalidf("root metadata is %d bytes; the limit is %d", len(data), MaxRootBytes)
	}
	md, err := decode(metadata.Root().FromBytes, data)
	if err != nil {
		return Versions{}, invalidf("root metadata: not TUF root metadata: %v", err)
	}
	want := int64(1)
	if cur.root != nil {
		want = cur.root.Signed.Version + 1
	}
	if md.Signed.Version != want {
		return Versions{}, preconditionf("root version %d: the next root must be version %d", md.Signed.Version, want)
	}
	if err := r.checkRoot(md); err != nil {
		return Versions{}, err
	}
	if cur.root != nil {
		if err := cur.root.VerifyDelegate(metadata.ROOT, md); err != nil {
			return Versions{}, invalidf("root version %d is not signed by a threshold of the current root's keys: %v", md.Signed.Version, err)
		}
	}
	if err := md.VerifyDelegate(metadata.ROOT, md); err != nil {
		return Versions{}, invalidf("root version %d is not signed by a threshold of its own root keys: %v", md.Signed.Version, err)
	}

	name := fmtRole(metadata.ROOT, md.Signed.Version)
	if err := r.cfg.Storage.WriteAll(ctx, metadataKey(name), data); err != nil {
		return Versions{}, fmt.Errorf("store %s: %w", name, err)
	}
	if err := r.cfg.Storage.WriteAll(ctx, metadataKey("root.json"), data); err != nil {
		return Versions{}, fmt.Errorf("store root.json: %w", err)
	}
	n := *cur
	n.root = md
	next := &n
	// Clients that follow a root rotation drop snapshot and timestamp
	// signed with keys that changed; fresh versions keep them going.
	if cur.snapshot != nil {
		if next, err = r.commit(ctx, next, nil, true); err != nil {
			return Versions{}, err
		}
	}
	r.committed(ctx, next)
	r.cfg.Logger.InfoContext(ctx, "root published", "version", md.Signed.Version)
	return next.versions(), nil
}

func (r *Repository) checkRoot(md *metadata.Metadata[metadata.RootType]) error {
	s := md.Signed
	if !s.ConsistentSnapshot {
		return invalidf("root: consistent_snapshot must be true (Ferry serves consistent snapshots)")
	}
	if !s.Expires.After(r.cfg.Now()) {
		return invalidf("root version %d expired at %s", s.Version, s.Expires.Format(time.RFC3339))
	}
	for _, name := range metadata.TOP_LEVEL_ROLE_NAMES {
		role, ok := s.Roles[name]
		if !ok || role == nil {
			return invalidf("root: role %q is missing", name)
		}
		if role.Threshold < 1 || role.Threshold > len(role.KeyIDs) {
			return invalidf("root: role %q has threshold %d with %d keys", name, role.Threshold, len(role.KeyIDs))
		}
		for _, id := range role.KeyIDs {
			k, ok := s.Keys[id]
			if !ok || k == nil {
				return invalidf("root: role %q names key %s, which is not in keys", name, id)
			}
			if got, err := k.ID(); err != nil || got != id {
				return invalidf("root: key %s has the wrong id", id)
			}
			if (name == metadata.ROOT || name == metadata.TARGETS) && (id == r.snapID || id == r.tsID) {
				return invalidf("root: role %q uses ferryd's online key %s; root and targets keys must stay offline", name, id)
			}
		}
	}
	for role, id := range map[string]string{metadata.SNAPSHOT: r.snapID, metadata.TIMESTAMP: r.tsID} {
		rr := s.Roles[role]
		if rr.Threshold != 1 || !slices.Contains(rr.KeyIDs, id) {
			return invalidf("root: role %q must name ferryd's online %s key %s with threshold 1 (see GetOnlineKeys)", role, role, id)
		}
	}
	return nil
}

// PublishTargets verifies targets metadata signed offline and publishes
// it: the top-level "targets" against the trusted root, a delegated role
// against the delegating targets (the top-level one, which may be in the
// same batch). Every target must name a valid path and a blob already
// uploaded with its length and SHA-256. Then a new snapshot and timestamp
// are signed. Either the whole batch is published or nothing changes.
func (r *Repository) PublishTargets(ctx context.Context, batch []SignedMetadata) (Versions, error) {
	unlock, err := r.lockWrite(ctx)
	if err != nil {
		return Versions{}, err
	}
	defer unlock()
	cur, err := r.sync(ctx)
	if err != nil {
		return Versions{}, err
	}
	if cur.root == nil {
		return Versions{}, preconditionf("the repository has no root yet: publish one first (ferryctl repo init)")
	}
	if len(batch) == 0 {
		return Versions{}, invalidf("no metadata submitted")
	}
	batch = slices.Clone(batch)
	// The top-level targets first: it may delegate to the others.
	slices.SortStableFunc(batch, func(a, b SignedMetadata) int {
		return boolInt(b.Role == metadata.TARGETS) - boolInt(a.Role == metadata.TARGETS)
	})
	updates := make(map[string]*metadata.Metadata[metadata.TargetsType], len(batch))
	top := cur.roles[metadata.TARGETS]
	for _, sm := range batch {
		if _, dup := updates[sm.Role]; dup {
			return Versions{}, invalidf("role %q submitted twice", sm.Role)
		}
		md, err := r.verifyTargets(ctx, cur, top, sm, updates)
		if err != nil {
			return Versions{}, err
		}
		updates[sm.Role] = md
		if sm.Role == metadata.TARGETS {
			top = md
		}
	}
	if top == nil {
		return Versions{}, preconditionf("the top-level targets role has not been published yet")
	}
	// Every published delegated role must stay delegated.
	for role := range cur.roles {
		if role != metadata.TARGETS && !delegates(top, role) {
			return Versions{}, invalidf("targets: role %q is published but no longer delegated; remove its targets first", role)
		}
	}

	next := newState()
	for role, md := range cur.roles {
		next.roles[role] = md
	}
	for role, md := range updates {
		next.roles[role] = md
	}
	if err := checkDeltas(cur, next, updates); err != nil {
		return Versions{}, err
	}

	for _, sm := range batch {
		name := fmtRole(sm.Role, updates[sm.Role].Signed.Version)
		if err := r.cfg.Storage.WriteAll(ctx, metadataKey(name), sm.Data); err != nil {
			return Versions{}, fmt.Errorf("store %s: %w", name, err)
		}
	}
	committed, err := r.commit(ctx, cur, updates, true)
	if err != nil {
		return Versions{}, err
	}
	r.committed(ctx, committed)
	next = committed
	r.cfg.Logger.InfoContext(ctx, "targets published", "roles", len(batch), "snapshot", next.snapshot.Signed.Version)
	return next.versions(), nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// delegates reports whether top delegates role.
func delegates(top *metadata.Metadata[metadata.TargetsType], role string) bool {
	d := top.Signed.Delegations
	if d == nil {
		return false
	}
	if d.SuccinctRoles != nil {
		return d.SuccinctRoles.IsDelegatedRole(role)
	}
	for _, dr := range d.Roles {
		if dr.Name == role {
			return true
		}
	}
	return false
}

// delegatedPath reports whether top delegates path to role.
func delegatedPath(top *metadata.Metadata[metadata.TargetsType], role, path string) bool {
	for _, rr := range top.Signed.Delegations.GetRolesForTarget(path) {
		if rr.Name == role {
			return true
		}
	}
	return false
}

// holder returns the other role that already publishes path, if any: for
// a delegated role, the top-level targets; for the top-level targets (md),
// a delegated role not replaced in the same batch.
func holder(cur *state, top, md *metadata.Metadata[metadata.TargetsType], role, path string, batch map[string]*metadata.Metadata[metadata.TargetsType]) string {
	if role != metadata.TARGETS {
		if top != nil {
			if _, ok := top.Signed.Targets[path]; ok {
				return metadata.TARGETS
			}
		}
		return ""
	}
	if md.Signed.Delegations == nil {
		return ""
	}
	for _, rr := range md.Signed.Delegations.GetRolesForTarget(path) {
		if _, replaced := batch[rr.Name]; replaced {
			continue
		}
		if d := cur.roles[rr.Name]; d != nil {
			if _, ok := d.Signed.Targets[path]; ok {
				return rr.Name
			}
		}
	}
	return ""
}

func (r *Repository) verifyTargets(ctx context.Context, cur *state, top *metadata.Metadata[metadata.TargetsType], sm SignedMetadata, batch map[string]*metadata.Metadata[metadata.TargetsType]) (*metadata.Metadata[metadata.TargetsType], error) {
	role := sm.Role
	if role != metadata.TARGETS && !ValidRoleName(role) {
		return nil, invalidf("role %q: not a targets role name (lowercase letters, digits, '-' and '_')", role)
	}
	if len(sm.Data) > MaxTargetsBytes {
		return nil, invalidf("%s metadata is %d bytes; the limit is %d", role, len(sm.Data), MaxTargetsBytes)
	}
	md, err := decode(metadata.Targets().FromBytes, sm.Data)
	if err != nil {
		return nil, invalidf("%s metadata: not TUF targets metadata: %v", role, err)
	}
	if role == metadata.TARGETS {
		if err := cur.root.VerifyDelegate(metadata.TARGETS, md); err != nil {
			return nil, invalidf("targets metadata is not signed by a threshold of the trusted root's targets keys: %v", err)
		}
		if d := md.Signed.Delegations; d != nil {
			if d.SuccinctRoles != nil {
				sr := d.SuccinctRoles
				if sr.BitLength < 1 || sr.BitLength > 16 || !ValidRoleName(sr.NamePrefix) {
					return nil, invalidf("targets: succinct_roles want bit_length 1 to 16 and a valid name_prefix")
				}
			}
			for _, dr := range d.Roles {
				if !ValidRoleName(dr.Name) || dr.Name == metadata.TARGETS {
					return nil, invalidf("targets: delegated role name %q is not allowed", dr.Name)
				}
			}
		}
	} else {
		if top == nil || !delegates(top, role) {
			return nil, preconditionf("role %q is not delegated by the targets role", role)
		}
		if err := top.VerifyDelegate(role, md); err != nil {
			return nil, invalidf("%s metadata is not signed by a threshold of its delegated keys: %v", role, err)
		}
		if md.Signed.Delegations != nil {
			return nil, invalidf("%s: delegated roles may not delegate further", role)
		}
	}
	var published int64
	if cur.snapshot != nil {
		if mf := cur.snapshot.Signed.Meta[role+".json"]; mf != nil {
			published = mf.Version
		}
	}
	if md.Signed.Version <= published {
		return nil, preconditionf("%s version %d is not greater than the published version %d", role, md.Signed.Version, published)
	}
	if !md.Signed.Expires.After(r.cfg.Now()) {
		return nil, invalidf("%s version %d expired at %s", role, md.Signed.Version, md.Signed.Expires.Format(time.RFC3339))
	}
	old := cur.roles[role]
	for path, tf := range md.Signed.Targets {
		if err := ValidTargetPath(path); err != nil {
			return nil, err
		}
		if role != metadata.TARGETS && !delegatedPath(top, role, path) {
			return nil, invalidf("%s: target %q is not delegated to this role", role, path)
		}
		if other := holder(cur, top, md, role, path, batch); other != "" {
			return nil, preconditionf("target %q is already published by role %q", path, other)
		}
		digest, ok := tf.Hashes["sha256"]
		if !ok || len(tf.Hashes) != 1 || len(digest) != sha256.Size {
			return nil, invalidf("target %q: want exactly one hash, sha256", path)
		}
		if tf.Length < 0 || tf.Length > r.cfg.MaxBlobBytes {
			return nil, invalidf("target %q: length %d is out of range (0 to %d)", path, tf.Length, r.cfg.MaxBlobBytes)
		}
		var prev *metadata.TargetFiles
		if old != nil {
			prev = old.Signed.Targets[path]
		}
		if err := checkBundleVersion(path, tf, prev); err != nil {
			return nil, err
		}
		if prev != nil && prev.Length == tf.Length && slices.Equal(prev.Hashes["sha256"], digest) {
			continue // unchanged: its blob was checked when it was published
		}
		hexDigest := hex.EncodeToString(digest)
		size, err := r.cfg.Storage.Size(ctx, BlobKey(hexDigest))
		if isNotExist(err) {
			return nil, preconditionf("target %q: no blob with sha256 %s has been uploaded", path, hexDigest)
		}
		if err != nil {
			return nil, fmt.Errorf("blob %s: %w", hexDigest, err)
		}
		if size != tf.Length {
			return nil, invalidf("target %q: length %d does not match the uploaded blob's %d bytes", path, tf.Length, size)
		}
	}
	return md, nil
}
