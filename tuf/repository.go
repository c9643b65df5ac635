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
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	// Lock serializes writes with the other instances that share Storage;
	// nil when this instance is the only one that writes.
	Lock Locker
	// Changed, if set, is called after each write this instance made to
	// the repository (a publish or a re-signing), to tell the other
	// instances that share Storage.
	Changed func(ctx context.Context)
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
// in parallel on an immutable view of the repository, writes are
// serialized (across instances too, with Config.Lock).
//
// Several ferryd instances may share one Storage. Each serves the view it
// last loaded, whole: a timestamp, the snapshot it names and the targets
// roles that snapshot names, loaded and checked together and swapped in at
// once (view.go). Refresh re-reads the view when the stored timestamp has
// changed; it runs on each timestamp request, on a miss for a target or
// bundle, when a peer's notice arrives and every few seconds (Watch).
type Repository struct {
	cfg            Config
	snapKey, tsKey *metadata.Key
	snapID, tsID   string

	write sync.Mutex // serializes this instance's writers

	view atomic.Pointer[state] // what is served; replaced whole

	loading sync.Mutex // serializes loads after a change
	flight  refreshFlight
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
	st, err := r.load(ctx, nil)
	if err != nil {
		return nil, err
	}
	r.view.Store(st)
	return r, nil
}

// OnlineKeys returns the public keys of ferryd's snapshot and timestamp
// roles, by role name. A root must name them.
func (r *Repository) OnlineKeys() map[string]*metadata.Key {
	return map[string]*metadata.Key{metadata.SNAPSHOT: r.snapKey, metadata.TIMESTAMP: r.tsKey}
}

// Versions returns the versions of the metadata this instance serves.
func (r *Repository) Versions() Versions { return r.view.Load().versions() }

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

// Bundle returns the published target at path, from the view this
// instance serves.
func (r *Repository) Bundle(path string) (Bundle, error) {
	role, tf, ok := r.view.Load().lookup(path)
	if !ok {
		return Bundle{}, notFoundf("no bundle %q in the current repository version", path)
	}
	return bundleFrom(path, role, tf), nil
}

// FindBundle is Bundle, but on a miss it first checks the storage again:
// another instance sharing it may have published the bundle since this one
// last loaded it.
func (r *Repository) FindBundle(ctx context.Context, path string) (Bundle, error) {
	if b, err := r.Bundle(path); err == nil {
		return b, nil
	}
	if _, err := r.Refresh(ctx); err != nil {
		return Bundle{}, err
	}
	return r.Bundle(path)
}

// Bundles returns up to n published targets whose paths sort after
// 'after', in path order.
func (r *Repository) Bundles(after string, n int) []Bundle {
	st := r.view.Load()
	sorted := st.sortedTargets()
	i, found := slices.BinarySearchFunc(sorted, after, func(e pathRole, t string) int { return strings.Compare(e.path, t) })
	if found {
		i++
	}
	out := make([]Bundle, 0, max(0, min(n, len(sorted)-i)))
	for ; i < len(sorted) && len(out) < n; i++ {
		e := sorted[i]
		out = append(out, bundleFrom(e.path, e.role, st.roles[e.role].Signed.Targets[e.path]))
	}
	return out
}

var metadataNameRE = regexp.MustCompile(`^([1-9][0-9]{0,18}\.)?[a-z0-9][a-z0-9_-]{0,63}\.json$`)

// OpenMetadata opens a metadata file by its served name ("timestamp.json",
// "3.root.json", "12.snapshot.json", "7.targets.json", "2.bins-0a.json").
//
// timestamp.json is the one this instance's view holds, after a check
// that the stored one has not changed (Refresh): so the snapshot it names,
// and the targets that snapshot names, are the ones this instance serves.
// Versioned names never change and are read from the storage.
func (r *Repository) OpenMetadata(ctx context.Context, name string) (Object, error) {
	if !metadataNameRE.MatchString(name) {
		return nil, notFoundf("no metadata %q", name)
	}
	if name == "timestamp.json" {
		if _, err := r.Refresh(ctx); err != nil && ctx.Err() == nil {
			// The view held is whole and still valid: serve it.
			r.cfg.Logger.WarnContext(ctx, "check the stored timestamp", "err", err)
		}
		st := r.view.Load()
		if st.timestampRaw == nil {
			return nil, notFoundf("no metadata %q", name)
		}
		return newMemObject(st.timestampRaw), nil
	}
	o, err := r.cfg.Storage.Open(ctx, metadataKey(name))
	if isNotExist(err) {
		return nil, notFoundf("no metadata %q", name)
	}
	return o, err
}

// OpenTarget opens the blob of a published target, given its path and
// SHA-256 as named in a download URL. A target this instance does not
// know yet is looked for again after a check of the storage: the client
// may have read a newer timestamp from another instance.
func (r *Repository) OpenTarget(ctx context.Context, path, sha256Hex string) (Object, error) {
	b, err := r.Bundle(path)
	if err != nil || b.SHA256() != sha256Hex {
		if changed, err := r.Refresh(ctx); err != nil || !changed {
			return nil, notFoundf("no target %q with sha256 %s", path, sha256Hex)
		}
		if b, err = r.Bundle(path); err != nil || b.SHA256() != sha256Hex {
			return nil, notFoundf("no target %q with sha256 %s", path, sha256Hex)
		}
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
	md, ok := r.view.Load().roles[role]
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
