// Package tuf is Ferry's TUF repository, built on go-tuf v2's metadata
// API: the four top-level roles, delegated targets roles and hash-bin
// (succinct) delegation, consistent snapshots, publishing of targets
// metadata signed offline, and re-signing of snapshot and timestamp with
// ferryd's online keys before they expire. Metadata and blobs live behind
// the Storage interface.
//
// The repository never holds a root or targets key: every targets role's
// metadata arrives signed, is verified against the trusted root (or the
// delegating role) and is stored byte for byte. Only snapshot and timestamp
// are signed here.
//
// The release engineer's side (building and signing root and targets) is
// in offline.go of this package, so that ferryctl only wires it.
package tuf

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Config configures a Repository. Zero durations take the defaults shown.
type Config struct {
	// Storage holds metadata and blobs. Required.
	Storage Storage
	// Keys are ferryd's online snapshot and timestamp signers. Required.
	Keys OnlineKeys
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	// Logger; discards if nil.
	Logger *slog.Logger
	// SnapshotExpiry is the lifetime of each signed snapshot (7 days).
	SnapshotExpiry time.Duration
	// TimestampExpiry is the lifetime of each signed timestamp (1 day).
	TimestampExpiry time.Duration
	// MaxBlobBytes is the largest bundle accepted (4 GiB).
	MaxBlobBytes int64
}

// Defaults of Config.
const (
	DefaultSnapshotExpiry  = 7 * 24 * time.Hour
	DefaultTimestampExpiry = 24 * time.Hour
	DefaultMaxBlobBytes    = 4 << 30
)

// SignedMetadata is one targets role's metadata as submitted: JSON, signed.
type SignedMetadata struct {
	Role string
	Data []byte
}

// Versions are the current versions of the repository's metadata; zero
// means none yet.
type Versions struct {
	Root, Targets, Snapshot, Timestamp int64
}

// Repository is a TUF repository. It is safe for concurrent use: reads run
// in parallel, writes are serialized. Several ferryd instances may share
// one Storage; before each write an instance reloads if another one has
// published since, but two simultaneous writes on different instances are
// not serialized (publish through one instance at a time).
type Repository struct {
	cfg            Config
	snapKey, tsKey *metadata.Key
	snapID, tsID   string

	write sync.Mutex // serializes writers

	mu sync.RWMutex // guards st
	st state
}

type state struct {
	root      *metadata.Metadata[metadata.RootType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	timestamp *metadata.Metadata[metadata.TimestampType]
	roles     map[string]*metadata.Metadata[metadata.TargetsType]
	sorted    []pathRole // every target, sorted by path; nil until needed
}

type pathRole struct{ path, role string }

// lookup finds the published target at path the way a client does: in the
// top-level targets, then in the roles delegated that path, in order.
func (st *state) lookup(path string) (string, *metadata.TargetFiles, bool) {
	top := st.roles[metadata.TARGETS]
	if top == nil {
		return "", nil, false
	}
	if tf, ok := top.Signed.Targets[path]; ok {
		return metadata.TARGETS, tf, true
	}
	if top.Signed.Delegations == nil {
		return "", nil, false
	}
	for _, rr := range top.Signed.Delegations.GetRolesForTarget(path) {
		if md := st.roles[rr.Name]; md != nil {
			if tf, ok := md.Signed.Targets[path]; ok {
				return rr.Name, tf, true
			}
		}
		if rr.Terminating {
			break
		}
	}
	return "", nil, false
}

// Open loads the repository in cfg.Storage (an empty one is valid: it
// waits for its first root).
func Open(ctx context.Context, cfg Config) (*Repository, error) {
	if cfg.Storage == nil || cfg.Keys.Snapshot == nil || cfg.Keys.Timestamp == nil {
		return nil, errors.New("tuf: storage and online keys are required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SnapshotExpiry <= 0 {
		cfg.SnapshotExpiry = DefaultSnapshotExpiry
	}
	if cfg.TimestampExpiry <= 0 {
		cfg.TimestampExpiry = DefaultTimestampExpiry
	}
	if cfg.MaxBlobBytes <= 0 {
		cfg.MaxBlobBytes = DefaultMaxBlobBytes
	}
	r := &Repository{cfg: cfg}
	var err error
	if r.snapKey, err = PublicKey(cfg.Keys.Snapshot); err != nil {
		return nil, fmt.Errorf("snapshot key: %w", err)
	}
	if r.tsKey, err = PublicKey(cfg.Keys.Timestamp); err != nil {
		return nil, fmt.Errorf("timestamp key: %w", err)
	}
	r.snapID, r.tsID = KeyID(r.snapKey), KeyID(r.tsKey)
	st, err := r.load(ctx)
	if err != nil {
		return nil, err
	}
	r.st = st
	return r, nil
}

// OnlineKeys returns the public keys of ferryd's snapshot and timestamp
// roles, by role name. A root must name them.
func (r *Repository) OnlineKeys() map[string]*metadata.Key {
	return map[string]*metadata.Key{metadata.SNAPSHOT: r.snapKey, metadata.TIMESTAMP: r.tsKey}
}

// Versions returns the current metadata versions.
func (r *Repository) Versions() Versions {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.st.versions()
}

func (st *state) versions() Versions {
	var v Versions
	if st.root != nil {
		v.Root = st.root.Signed.Version
	}
	if t := st.roles[metadata.TARGETS]; t != nil {
		v.Targets = t.Signed.Version
	}
	if st.snapshot != nil {
		v.Snapshot = st.snapshot.Signed.Version
	}
	if st.timestamp != nil {
		v.Timestamp = st.timestamp.Signed.Version
	}
	return v
}

// load reads the current repository from storage.
func (r *Repository) load(ctx context.Context) (state, error) {
	st := state{roles: map[string]*metadata.Metadata[metadata.TargetsType]{}}
	raw, err := r.cfg.Storage.ReadAll(ctx, metadataKey("root.json"))
	if isNotExist(err) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read root: %w", err)
	}
	if st.root, err = metadata.Root().FromBytes(raw); err != nil {
		return st, fmt.Errorf("parse stored root: %w", err)
	}
	raw, err = r.cfg.Storage.ReadAll(ctx, metadataKey("timestamp.json"))
	if isNotExist(err) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read timestamp: %w", err)
	}
	if st.timestamp, err = metadata.Timestamp().FromBytes(raw); err != nil {
		return st, fmt.Errorf("parse stored timestamp: %w", err)
	}
	sv := st.timestamp.Signed.Meta["snapshot.json"].Version
	if raw, err = r.cfg.Storage.ReadAll(ctx, metadataKey(fmtRole(metadata.SNAPSHOT, sv))); err != nil {
		return st, fmt.Errorf("read snapshot: %w", err)
	}
	if st.snapshot, err = metadata.Snapshot().FromBytes(raw); err != nil {
		return st, fmt.Errorf("parse stored snapshot: %w", err)
	}
	for name, mf := range st.snapshot.Signed.Meta {
		role, ok := cutJSON(name)
		if !ok {
			continue
		}
		raw, err := r.cfg.Storage.ReadAll(ctx, metadataKey(fmtRole(role, mf.Version)))
		if err != nil {
			return st, fmt.Errorf("read %s: %w", role, err)
		}
		md, err := metadata.Targets().FromBytes(raw)
		if err != nil {
			return st, fmt.Errorf("parse stored %s: %w", role, err)
		}
		st.roles[role] = md
	}
	return st, nil
}

func cutJSON(name string) (string, bool) {
	if len(name) > 5 && name[len(name)-5:] == ".json" {
		return name[:len(name)-5], true
	}
	return "", false
}

// sync reloads the state if another instance wrote a newer timestamp or
// root, and returns the current state. The caller holds r.write.
func (r *Repository) sync(ctx context.Context) (state, error) {
	raw, err := r.cfg.Storage.ReadAll(ctx, metadataKey("timestamp.json"))
	if err != nil && !isNotExist(err) {
		return state{}, fmt.Errorf("read timestamp: %w", err)
	}
	r.mu.RLock()
	have := r.st
	r.mu.RUnlock()
	cur := have.versions()
	var stored int64
	if err == nil {
		ts, err := metadata.Timestamp().FromBytes(raw)
		if err != nil {
			return state{}, fmt.Errorf("parse stored timestamp: %w", err)
		}
		stored = ts.Signed.Version
	}
	rootChanged := false
	if raw, err := r.cfg.Storage.ReadAll(ctx, metadataKey(fmtRole(metadata.ROOT, cur.Root+1))); err == nil && len(raw) > 0 {
		rootChanged = true
	}
	if stored == cur.Timestamp && !rootChanged {
		return have, nil
	}
	st, err := r.load(ctx)
	if err != nil {
		return state{}, err
	}
	r.mu.Lock()
	r.st = st
	r.mu.Unlock()
	return st, nil
}

// PublishRoot verifies and stores a new root. The first root (version 1)
// must be signed by a threshold of its own root keys; each later one by a
// threshold of the current root's keys and of its own, with the version
// one higher. Snapshot and timestamp roles must name ferryd's online keys
// with threshold 1, and no root or targets role may use them.
func (r *Repository) PublishRoot(ctx context.Context, data []byte) (Versions, error) {
	r.write.Lock()
	defer r.write.Unlock()
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
	next := cur
	next.root = md
	// Clients that follow a root rotation drop snapshot and timestamp
	// signed with keys that changed; fresh versions keep them going.
	if cur.snapshot != nil {
		if next, err = r.commit(ctx, next, nil, true); err != nil {
			return Versions{}, err
		}
	}
	r.mu.Lock()
	r.st = next
	r.mu.Unlock()
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
	r.write.Lock()
	defer r.write.Unlock()
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

	for _, sm := range batch {
		name := fmtRole(sm.Role, updates[sm.Role].Signed.Version)
		if err := r.cfg.Storage.WriteAll(ctx, metadataKey(name), sm.Data); err != nil {
			return Versions{}, fmt.Errorf("store %s: %w", name, err)
		}
	}
	next, err := r.commit(ctx, cur, updates, true)
	if err != nil {
		return Versions{}, err
	}
	r.mu.Lock()
	r.st = next
	r.mu.Unlock()
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
func holder(cur state, top, md *metadata.Metadata[metadata.TargetsType], role, path string, batch map[string]*metadata.Metadata[metadata.TargetsType]) string {
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

func (r *Repository) verifyTargets(ctx context.Context, cur state, top *metadata.Metadata[metadata.TargetsType], sm SignedMetadata, batch map[string]*metadata.Metadata[metadata.TargetsType]) (*metadata.Metadata[metadata.TargetsType], error) {
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

// commit signs a new snapshot (when newSnapshot, or when there is none)
// and a new timestamp over cur with updates applied, stores them (the
// timestamp last: it is what makes the new version current), and returns
// the new state. The caller holds r.write.
func (r *Repository) commit(ctx context.Context, cur state, updates map[string]*metadata.Metadata[metadata.TargetsType], newSnapshot bool) (state, error) {
	now := r.cfg.Now().UTC()
	next := cur
	if len(updates) > 0 {
		next.roles = maps.Clone(cur.roles)
		next.sorted = nil
		maps.Copy(next.roles, updates)
	}
	if newSnapshot || cur.snapshot == nil {
		snap := metadata.Snapshot(expiry(now, r.cfg.SnapshotExpiry))
		snap.Signed.Meta = map[string]*metadata.MetaFiles{}
		if cur.snapshot != nil {
			maps.Copy(snap.Signed.Meta, cur.snapshot.Signed.Meta)
			snap.Signed.Version = cur.snapshot.Signed.Version + 1
		}
		for role, md := range updates {
			snap.Signed.Meta[role+".json"] = &metadata.MetaFiles{Version: md.Signed.Version}
		}
		if _, err := snap.Sign(r.cfg.Keys.Snapshot); err != nil {
			return state{}, fmt.Errorf("sign snapshot: %w", err)
		}
		raw, err := snap.ToBytes(false)
		if err != nil {
			return state{}, err
		}
		if err := r.cfg.Storage.WriteAll(ctx, metadataKey(fmtRole(metadata.SNAPSHOT, snap.Signed.Version)), raw); err != nil {
			return state{}, fmt.Errorf("store snapshot: %w", err)
		}
		next.snapshot = snap
		next.timestamp = nil // must follow the new snapshot
		sum := sha256.Sum256(raw)
		ts := metadata.Timestamp(expiry(now, r.cfg.TimestampExpiry))
		ts.Signed.Meta["snapshot.json"] = &metadata.MetaFiles{
			Version: snap.Signed.Version, Length: int64(len(raw)), Hashes: metadata.Hashes{"sha256": sum[:]},
		}
		if cur.timestamp != nil {
			ts.Signed.Version = cur.timestamp.Signed.Version + 1
		}
		next.timestamp = ts
	} else {
		ts := metadata.Timestamp(expiry(now, r.cfg.TimestampExpiry))
		ts.Signed.Meta = cur.timestamp.Signed.Meta
		ts.Signed.Version = cur.timestamp.Signed.Version + 1
		next.timestamp = ts
	}
	if _, err := next.timestamp.Sign(r.cfg.Keys.Timestamp); err != nil {
		return state{}, fmt.Errorf("sign timestamp: %w", err)
	}
	raw, err := next.timestamp.ToBytes(false)
	if err != nil {
		return state{}, err
	}
	if err := r.cfg.Storage.WriteAll(ctx, metadataKey("timestamp.json"), raw); err != nil {
		return state{}, fmt.Errorf("store timestamp: %w", err)
	}
	return next, nil
}

func expiry(now time.Time, d time.Duration) time.Time { return now.Add(d).Truncate(time.Second) }

// RefreshExpiring re-signs what is past half its lifetime: a new snapshot
// (and timestamp) when the snapshot is, else a new timestamp when the
// timestamp is. It reports whether it signed anything.
func (r *Repository) RefreshExpiring(ctx context.Context) (bool, error) {
	r.write.Lock()
	defer r.write.Unlock()
	cur, err := r.sync(ctx)
	if err != nil {
		return false, err
	}
	if cur.snapshot == nil {
		return false, nil
	}
	now := r.cfg.Now()
	snapDue := cur.snapshot.Signed.Expires.Sub(now) < r.cfg.SnapshotExpiry/2
	tsDue := cur.timestamp.Signed.Expires.Sub(now) < r.cfg.TimestampExpiry/2
	if !snapDue && !tsDue {
		return false, nil
	}
	next, err := r.commit(ctx, cur, nil, snapDue)
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	r.st = next
	r.mu.Unlock()
	r.cfg.Logger.InfoContext(ctx, "re-signed before expiry", "snapshot", next.snapshot.Signed.Version, "timestamp", next.timestamp.Signed.Version)
	return true, nil
}

// Run calls RefreshExpiring every interval until ctx ends.
func (r *Repository) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := r.RefreshExpiring(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.ErrorContext(ctx, "re-sign snapshot and timestamp", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// UploadBlob stores a bundle's bytes, read from src, under its SHA-256.
// The bytes must match length and sha256Hex exactly or nothing is stored.
// A blob becomes downloadable only once published targets name it.
func (r *Repository) UploadBlob(ctx context.Context, length int64, sha256Hex string, src io.Reader) error {
	if !ValidSHA256(sha256Hex) {
		return invalidf("sha256 %q: want 64 lowercase hex digits", sha256Hex)
	}
	if length < 0 || length > r.cfg.MaxBlobBytes {
		return invalidf("length %d is out of range (0 to %d)", length, r.cfg.MaxBlobBytes)
	}
	key := BlobKey(sha256Hex)
	var dst io.Writer = io.Discard
	var w io.WriteCloser
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if size, err := r.cfg.Storage.Size(ctx, key); err != nil || size != length {
		if w, err = r.cfg.Storage.Create(wctx, key); err != nil {
			return fmt.Errorf("create blob: %w", err)
		}
		dst = w
	}
	abort := func(err error) error {
		if w != nil {
			cancel()
			w.Close()
		}
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(dst, h), io.LimitReader(src, length+1))
	if err != nil {
		return abort(fmt.Errorf("receive blob: %w", err))
	}
	if n != length {
		return abort(invalidf("received %s bytes; the declared length is %d", countMore(n, length), length))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha256Hex {
		return abort(invalidf("the received bytes have sha256 %s; the declared sha256 is %s", got, sha256Hex))
	}
	if w != nil {
		if err := w.Close(); err != nil {
			return fmt.Errorf("store blob: %w", err)
		}
	}
	return nil
}

func countMore(n, length int64) string {
	if n > length {
		return fmt.Sprintf("more than %d", length)
	}
	return fmt.Sprint(n)
}

// Bundle returns the published target at path.
func (r *Repository) Bundle(path string) (Bundle, error) {
	r.mu.RLock()
	role, tf, ok := r.st.lookup(path)
	r.mu.RUnlock()
	if !ok {
		return Bundle{}, notFoundf("no bundle %q in the current repository version", path)
	}
	return bundleFrom(path, role, tf), nil
}

// FindBundle is Bundle, but on a miss it first reads the storage again:
// another instance sharing it may have published the bundle since this one
// last synchronised.
func (r *Repository) FindBundle(ctx context.Context, path string) (Bundle, error) {
	if b, err := r.Bundle(path); err == nil {
		return b, nil
	}
	r.write.Lock()
	_, err := r.sync(ctx)
	r.write.Unlock()
	if err != nil {
		return Bundle{}, err
	}
	return r.Bundle(path)
}

// Bundles returns up to n published targets whose paths sort after
// 'after', in path order.
func (r *Repository) Bundles(after string, n int) []Bundle {
	r.mu.Lock()
	if r.st.sorted == nil {
		all := []pathRole{}
		for role, md := range r.st.roles {
			for p := range md.Signed.Targets {
				all = append(all, pathRole{p, role})
			}
		}
		slices.SortFunc(all, func(a, b pathRole) int { return strings.Compare(a.path, b.path) })
		r.st.sorted = all
	}
	st := r.st
	r.mu.Unlock()
	i, found := slices.BinarySearchFunc(st.sorted, after, func(e pathRole, t string) int { return strings.Compare(e.path, t) })
	if found {
		i++
	}
	out := make([]Bundle, 0, max(0, min(n, len(st.sorted)-i)))
	for ; i < len(st.sorted) && len(out) < n; i++ {
		e := st.sorted[i]
		out = append(out, bundleFrom(e.path, e.role, st.roles[e.role].Signed.Targets[e.path]))
	}
	return out
}

var metadataNameRE = regexp.MustCompile(`^([1-9][0-9]{0,18}\.)?[a-z0-9][a-z0-9_-]{0,63}\.json$`)

// OpenMetadata opens a metadata file by its served name ("timestamp.json",
// "3.root.json", "12.snapshot.json", "7.targets.json", "2.bins-0a.json").
func (r *Repository) OpenMetadata(ctx context.Context, name string) (Object, error) {
	if !metadataNameRE.MatchString(name) {
		return nil, notFoundf("no metadata %q", name)
	}
	o, err := r.cfg.Storage.Open(ctx, metadataKey(name))
	if isNotExist(err) {
		return nil, notFoundf("no metadata %q", name)
	}
	return o, err
}

// OpenTarget opens the blob of a published target, given its path and
// SHA-256 as named in a download URL.
func (r *Repository) OpenTarget(ctx context.Context, path, sha256Hex string) (Object, error) {
	b, err := r.Bundle(path)
	if err != nil || b.SHA256() != sha256Hex {
		return nil, notFoundf("no target %q with sha256 %s", path, sha256Hex)
	}
	o, err := r.cfg.Storage.Open(ctx, BlobKey(sha256Hex))
	if isNotExist(err) {
		return nil, notFoundf("no target %q with sha256 %s", path, sha256Hex)
	}
	return o, err
}

// TargetsOf returns the current signed metadata of a targets role, as
// stored, and its version; for building the next version offline.
func (r *Repository) TargetsOf(role string) (*metadata.Metadata[metadata.TargetsType], bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	md, ok := r.st.roles[role]
	return md, ok
}

// decode parses submitted metadata with go-tuf. go-tuf's decoders assume
// well-formed documents (a JSON null where an object belongs makes them
// dereference nil), so a panic while decoding untrusted bytes is turned
// into an error: the request is refused like any other malformed input.
func decode[T any](from func([]byte) (T, error), data []byte) (md T, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("malformed document: %v", p)
		}
	}()
	return from(data)
}
