package tuf

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// This file holds the view an instance serves and how it follows the
// storage. A view is immutable: a timestamp, the snapshot it names, the
// targets roles that snapshot names and the root, loaded and checked
// together (load), then swapped in whole. What is served comes from one
// view, so a timestamp served always names a snapshot and targets served
// by the same instance.

// state is one view of the repository. It is never changed once stored in
// Repository.view; a write builds the next one.
type state struct {
	root         *metadata.Metadata[metadata.RootType]
	snapshot     *metadata.Metadata[metadata.SnapshotType]
	timestamp    *metadata.Metadata[metadata.TimestampType]
	timestampRaw []byte // timestamp as stored: what is served
	roles        map[string]*metadata.Metadata[metadata.TargetsType]
	index        *targetIndex
}

// targetIndex is every target of a view sorted by path, built on first use.
type targetIndex struct {
	once   sync.Once
	sorted []pathRole
}

type pathRole struct{ path, role string }

func newState() *state {
	return &state{roles: map[string]*metadata.Metadata[metadata.TargetsType]{}, index: &targetIndex{}}
}

// sortedTargets returns every target of the view, sorted by path.
func (st *state) sortedTargets() []pathRole {
	st.index.once.Do(func() {
		all := []pathRole{}
		for role, md := range st.roles {
			for p := range md.Signed.Targets {
				all = append(all, pathRole{p, role})
			}
		}
		slices.SortFunc(all, func(a, b pathRole) int { return strings.Compare(a.path, b.path) })
		st.index.sorted = all
	})
	return st.index.sorted
}

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

// load reads the repository from storage and checks that it hangs
// together: the timestamp and snapshot are signed by the keys the root
// names for them, the snapshot is the one the timestamp names (version,
// length and SHA-256), and every targets role is the version the snapshot
// names. Roles that have (the view served) holds at the same version are
// reused, not read again: a role's versioned file never changes. have may
// be nil.
func (r *Repository) load(ctx context.Context, have *state) (*state, error) {
	st := newState()
	raw, err := r.cfg.Storage.ReadAll(ctx, metadataKey("root.json"))
	if isNotExist(err) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read root: %w", err)
	}
	if st.root, err = decode(metadata.Root().FromBytes, raw); err != nil {
		return nil, fmt.Errorf("parse stored root: %w", err)
	}
	raw, err = r.cfg.Storage.ReadAll(ctx, metadataKey("timestamp.json"))
	if isNotExist(err) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read timestamp: %w", err)
	}
	if st.timestamp, err = decode(metadata.Timestamp().FromBytes, raw); err != nil {
		return nil, fmt.Errorf("parse stored timestamp: %w", err)
	}
	st.timestampRaw = raw
	if err := st.root.VerifyDelegate(metadata.TIMESTAMP, st.timestamp); err != nil {
		return nil, fmt.Errorf("stored timestamp version %d: %w", st.timestamp.Signed.Version, err)
	}
	mf := st.timestamp.Signed.Meta["snapshot.json"]
	if mf == nil {
		return nil, fmt.Errorf("stored timestamp version %d names no snapshot", st.timestamp.Signed.Version)
	}
	if raw, err = r.cfg.Storage.ReadAll(ctx, metadataKey(fmtRole(metadata.SNAPSHOT, mf.Version))); err != nil {
		return nil, fmt.Errorf("read snapshot version %d: %w", mf.Version, err)
	}
	if err := checkNamed(mf, raw); err != nil {
		return nil, fmt.Errorf("stored snapshot version %d is not the one timestamp version %d names: %w", mf.Version, st.timestamp.Signed.Version, err)
	}
	if st.snapshot, err = decode(metadata.Snapshot().FromBytes, raw); err != nil {
		return nil, fmt.Errorf("parse stored snapshot: %w", err)
	}
	if st.snapshot.Signed.Version != mf.Version {
		return nil, fmt.Errorf("stored snapshot %d.snapshot.json holds version %d", mf.Version, st.snapshot.Signed.Version)
	}
	if err := st.root.VerifyDelegate(metadata.SNAPSHOT, st.snapshot); err != nil {
		return nil, fmt.Errorf("stored snapshot version %d: %w", mf.Version, err)
	}
	for name, mf := range st.snapshot.Signed.Meta {
		role, ok := cutJSON(name)
		if !ok {
			continue
		}
		if have != nil {
			if md := have.roles[role]; md != nil && md.Signed.Version == mf.Version {
				st.roles[role] = md
				continue
			}
		}
		raw, err := r.cfg.Storage.ReadAll(ctx, metadataKey(fmtRole(role, mf.Version)))
		if err != nil {
			return nil, fmt.Errorf("read %s version %d: %w", role, mf.Version, err)
		}
		md, err := decode(metadata.Targets().FromBytes, raw)
		if err != nil {
			return nil, fmt.Errorf("parse stored %s: %w", role, err)
		}
		if md.Signed.Version != mf.Version {
			return nil, fmt.Errorf("stored %s: %s holds version %d", role, fmtRole(role, mf.Version), md.Signed.Version)
		}
		st.roles[role] = md
	}
	return st, nil
}

// checkNamed checks raw against the length and SHA-256 that mf gives, if
// it gives them.
func checkNamed(mf *metadata.MetaFiles, raw []byte) error {
	if mf.Length != 0 && mf.Length != int64(len(raw)) {
		return fmt.Errorf("%d bytes, not %d", len(raw), mf.Length)
	}
	if want, ok := mf.Hashes["sha256"]; ok {
		if sum := sha256.Sum256(raw); !bytes.Equal(sum[:], want) {
			return fmt.Errorf("sha256 %x, not %x", sum, []byte(want))
		}
	}
	return nil
}

func cutJSON(name string) (string, bool) {
	if len(name) > 5 && name[len(name)-5:] == ".json" {
		return name[:len(name)-5], true
	}
	return "", false
}

// newer reports whether next may replace cur: not older in timestamp or
// root, and not the same timestamp with no newer root. A load that began
// before a local write finished is thus never swapped in over it.
func newer(next, cur *state) bool {
	nv, cv := next.versions(), cur.versions()
	switch {
	case nv.Timestamp < cv.Timestamp || nv.Root < cv.Root:
		return false
	case nv.Timestamp > cv.Timestamp || nv.Root > cv.Root:
		return true
	}
	// The same versions with other bytes: only instances writing without
	// a shared lock get here. The stored view is the one that hangs
	// together with the storage, so it wins.
	return !bytes.Equal(next.timestampRaw, cur.timestampRaw)
}

// swap makes next the view served, unless a newer one is served already.
func (r *Repository) swap(next *state) bool {
	for {
		cur := r.view.Load()
		if !newer(next, cur) {
			return false
		}
		if r.view.CompareAndSwap(cur, next) {
			return true
		}
	}
}

// refreshFlight lets concurrent callers of Refresh share one check.
type refreshFlight struct {
	mu  sync.Mutex
	cur *flight
}

type flight struct {
	done    chan struct{}
	changed bool
	err     error
}

// Refresh checks whether the stored repository changed since this
// instance loaded its view (one read of the stored timestamp; of the next
// root's name while there is no timestamp yet) and, if it did, loads and
// checks the new view and swaps it in whole. It reports whether the view
// changed. A new view that does not hang together (see load) is not
// served: the error says why and the view stays as it was. Concurrent
// calls share one check.
func (r *Repository) Refresh(ctx context.Context) (bool, error) {
	r.flight.mu.Lock()
	if f := r.flight.cur; f != nil {
		r.flight.mu.Unlock()
		select {
		case <-f.done:
			return f.changed, f.err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	r.flight.cur = f
	r.flight.mu.Unlock()
	f.changed, f.err = r.refresh(ctx)
	r.flight.mu.Lock()
	r.flight.cur = nil
	r.flight.mu.Unlock()
	close(f.done)
	return f.changed, f.err
}

func (r *Repository) refresh(ctx context.Context) (bool, error) {
	changed, err := r.storedChanged(ctx, r.view.Load())
	if err != nil || !changed {
		return false, err
	}
	r.loading.Lock()
	defer r.loading.Unlock()
	cur := r.view.Load() // another load may have finished meanwhile
	if changed, err = r.storedChanged(ctx, cur); err != nil || !changed {
		return false, err
	}
	next, err := r.load(ctx, cur)
	if err != nil {
		return false, err
	}
	if !r.swap(next) {
		return false, nil
	}
	v := next.versions()
	r.cfg.Logger.InfoContext(ctx, "repository reloaded", "root", v.Root, "targets", v.Targets, "snapshot", v.Snapshot, "timestamp", v.Timestamp)
	return true, nil
}

// storedChanged reports whether the stored timestamp differs from the one
// in st, or a root newer than st's is stored.
func (r *Repository) storedChanged(ctx context.Context, st *state) (bool, error) {
	raw, err := r.cfg.Storage.ReadAll(ctx, metadataKey("timestamp.json"))
	switch {
	case isNotExist(err):
		if st.timestampRaw != nil {
			return true, nil
		}
	case err != nil:
		return false, fmt.Errorf("read timestamp: %w", err)
	case !bytes.Equal(raw, st.timestampRaw):
		return true, nil
	}
	// A new root re-signs the timestamp when there is one; before there
	// is, only the root's own file tells.
	if st.timestampRaw == nil {
		_, err := r.cfg.Storage.Size(ctx, metadataKey(fmtRole(metadata.ROOT, st.versions().Root+1)))
		if err == nil {
			return true, nil
		}
		if !isNotExist(err) {
			return false, fmt.Errorf("look for the next root: %w", err)
		}
	}
	return false, nil
}

// sync brings the view up to date with the storage before a write, and
// returns it. The caller holds the write lock (lockWrite), so nothing else
// writes until it is done.
func (r *Repository) sync(ctx context.Context) (*state, error) {
	if _, err := r.refresh(ctx); err != nil {
		return nil, err
	}
	cur := r.view.Load()
	// A newer root while there is a timestamp: its publisher has not
	// re-signed the timestamp yet (or stopped before it did).
	if cur.timestampRaw != nil {
		if _, err := r.cfg.Storage.Size(ctx, metadataKey(fmtRole(metadata.ROOT, cur.versions().Root+1))); err == nil {
			next, err := r.load(ctx, cur)
			if err != nil {
				return nil, err
			}
			r.swap(next)
			cur = r.view.Load()
		}
	}
	return cur, nil
}

// Locker serializes the writers of all instances that share one Storage:
// without it, two instances publishing at once would each sign the next
// snapshot from the same current one, and the second would drop the
// first's change.
type Locker interface {
	// Lock waits until this instance holds the lock, or ctx ends, and
	// returns the function that releases it.
	Lock(ctx context.Context) (unlock func(), err error)
}

// lockWriteTimeout bounds the wait for another instance's write.
const lockWriteTimeout = 30 * time.Second

// lockWrite takes this instance's write lock and the shared one.
func (r *Repository) lockWrite(ctx context.Context) (unlock func(), err error) {
	r.write.Lock()
	if r.cfg.Lock == nil {
		return r.write.Unlock, nil
	}
	lctx, cancel := context.WithTimeout(ctx, lockWriteTimeout)
	defer cancel()
	release, err := r.cfg.Lock.Lock(lctx)
	if err != nil {
		r.write.Unlock()
		return nil, fmt.Errorf("wait for other instances' writes to the repository: %w", err)
	}
	return func() { release(); r.write.Unlock() }, nil
}

// committed makes next, just written, the view served and tells the other
// instances (Config.Changed).
func (r *Repository) committed(ctx context.Context, next *state) {
	r.swap(next)
	if r.cfg.Changed != nil {
		r.cfg.Changed(ctx)
	}
}

// Watch keeps the view in step with the storage until ctx ends: it checks
// every interval, and at once when poke receives (a peer's notice that it
// published). A failed check is logged and retried at the next one.
func (r *Repository) Watch(ctx context.Context, interval time.Duration, poke <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-poke:
		}
		if _, err := r.Refresh(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.WarnContext(ctx, "check the stored repository", "err", err)
		}
	}
}

// memObject serves bytes held in memory as an Object.
type memObject struct{ *bytes.Reader }

func newMemObject(b []byte) memObject { return memObject{bytes.NewReader(b)} }

func (memObject) Close() error { return nil }

// ModTime is zero: the served copy has no modification time of its own,
// and HTTP then sends no Last-Modified (a timestamp must be revalidated
// by content, not by a one-second clock).
func (memObject) ModTime() time.Time { return time.Time{} }
