// Package tuftest plays the release engineer in tests: it holds real
// offline root, targets and hash-bin keys, and builds and signs root and
// targets metadata for a Ferry repository.
package tuftest

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/tuf"
)

// Options shape the repository a Release builds.
type Options struct {
	// RootKeys and RootThreshold: 1 and 1 if zero.
	RootKeys, RootThreshold int
	// TargetsKeys and TargetsThreshold: 1 and 1 if zero.
	TargetsKeys, TargetsThreshold int
	// BinBits > 0 delegates every target to 2^BinBits hash bins.
	BinBits int
	// Now is the clock; time.Now if nil.
	Now func() time.Time
}

// Release is the offline side of one repository.
type Release struct {
	t       testing.TB
	opts    Options
	Online  map[string]*metadata.Key
	Root    []signature.Signer
	Targets []signature.Signer
	Bins    []signature.Signer
	RootMD  *metadata.Metadata[metadata.RootType]
	Top     *metadata.Metadata[metadata.TargetsType]
	// Roles holds the latest signed version of each delegated role.
	Roles map[string]*metadata.Metadata[metadata.TargetsType]
}

// New creates keys and a signed root version 1 naming the online keys.
func New(t testing.TB, online map[string]*metadata.Key, opts Options) *Release {
	t.Helper()
	if opts.RootKeys == 0 {
		opts.RootKeys, opts.RootThreshold = 1, 1
	}
	if opts.TargetsKeys == 0 {
		opts.TargetsKeys, opts.TargetsThreshold = 1, 1
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &Release{t: t, opts: opts, Online: online, Roles: map[string]*metadata.Metadata[metadata.TargetsType]{}}
	r.Root = Signers(t, opts.RootKeys)
	r.Targets = Signers(t, opts.TargetsKeys)
	if opts.BinBits > 0 {
		r.Bins = Signers(t, 1)
	}
	root, err := tuf.NewRoot(tuf.RootParams{
		Version:   1,
		Expires:   opts.Now().Add(tuf.DefaultRootExpiry),
		Root:      RoleKeys(t, r.Root, opts.RootThreshold),
		Targets:   RoleKeys(t, r.Targets, opts.TargetsThreshold),
		Snapshot:  online[metadata.SNAPSHOT],
		Timestamp: online[metadata.TIMESTAMP],
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tuf.Sign(root, r.Root[:opts.RootThreshold]...); err != nil {
		t.Fatal(err)
	}
	r.RootMD = root
	return r
}

// Signers creates n Ed25519 signers.
func Signers(t testing.TB, n int) []signature.Signer {
	t.Helper()
	out := make([]signature.Signer, n)
	for i := range out {
		priv, err := tuf.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		if out[i], err = tuf.NewSigner(priv); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// RoleKeys returns the public keys of signers with a threshold.
func RoleKeys(t testing.TB, signers []signature.Signer, threshold int) tuf.RoleKeys {
	t.Helper()
	rk := tuf.RoleKeys{Threshold: threshold}
	for _, s := range signers {
		k, err := tuf.PublicKey(s)
		if err != nil {
			t.Fatal(err)
		}
		rk.Keys = append(rk.Keys, k)
	}
	return rk
}

// Bytes serializes signed metadata.
func Bytes[T metadata.Roles](t testing.TB, md *metadata.Metadata[T]) []byte {
	t.Helper()
	raw, err := md.ToBytes(false)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// RootJSON is the signed current root.
func (r *Release) RootJSON() []byte { return Bytes(r.t, r.RootMD) }

// Init returns the first targets (and, with hash bins, every empty bin),
// signed, to publish after the root.
func (r *Release) Init() []tuf.SignedMetadata {
	r.t.Helper()
	r.Top = tuf.NewTargets(1, r.opts.Now().Add(tuf.DefaultTargetsExpiry))
	batch := []tuf.SignedMetadata{}
	if r.opts.BinBits > 0 {
		if err := tuf.DelegateHashBins(r.Top, "bins", r.opts.BinBits, RoleKeys(r.t, r.Bins, 1)); err != nil {
			r.t.Fatal(err)
		}
		for _, name := range tuf.DelegatedRoles(r.Top) {
			bin := tuf.NewTargets(1, r.opts.Now().Add(tuf.DefaultTargetsExpiry))
			r.Roles[name] = bin
			batch = append(batch, r.sign(name, bin))
		}
	}
	return append([]tuf.SignedMetadata{r.sign(metadata.TARGETS, r.Top)}, batch...)
}

func (r *Release) sign(role string, md *metadata.Metadata[metadata.TargetsType]) tuf.SignedMetadata {
	r.t.Helper()
	md.Signatures = nil
	signers := r.Targets[:r.opts.TargetsThreshold]
	if role != metadata.TARGETS {
		signers = r.Bins
	}
	if err := tuf.Sign(md, signers...); err != nil {
		r.t.Fatal(err)
	}
	return tuf.SignedMetadata{Role: role, Data: Bytes(r.t, md)}
}

// Role returns the current metadata of role ("targets" or a bin).
func (r *Release) Role(role string) *metadata.Metadata[metadata.TargetsType] {
	if role == metadata.TARGETS {
		return r.Top
	}
	return r.Roles[role]
}

// Edit applies change to the role that holds path, bumps its version and
// returns it signed.
func (r *Release) Edit(path string, change func(targets map[string]*metadata.TargetFiles)) tuf.SignedMetadata {
	r.t.Helper()
	role := tuf.RoleFor(r.Top, path)
	md := r.Role(role)
	change(md.Signed.Targets)
	md.Signed.Version++
	md.Signed.Expires = r.opts.Now().Add(tuf.DefaultTargetsExpiry).UTC().Truncate(time.Second)
	return r.sign(role, md)
}

// Add adds a target for data at path and returns its role, signed.
func (r *Release) Add(path string, data []byte) tuf.SignedMetadata {
	r.t.Helper()
	tf, err := tuf.NewTargetFile(path, int64(len(data)), SHA256(data), tuf.BundleInfo{Name: "test", Version: "1.0.0", Published: r.opts.Now().UTC().Truncate(time.Second)})
	if err != nil {
		r.t.Fatal(err)
	}
	return r.Edit(path, func(m map[string]*metadata.TargetFiles) { m[path] = tf })
}

// SHA256 returns the hex SHA-256 of data.
func SHA256(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Bump signs the next version of role as it now is.
func (r *Release) Bump(role string) tuf.SignedMetadata {
	r.t.Helper()
	md := r.Role(role)
	md.Signed.Version++
	return r.sign(role, md)
}

// Put adds targets (each at its Path) to the roles that hold them, bumps
// each role touched once and returns them signed, as one batch.
func (r *Release) Put(tfs ...*metadata.TargetFiles) []tuf.SignedMetadata {
	r.t.Helper()
	var roles []string
	for _, tf := range tfs {
		role := tuf.RoleFor(r.Top, tf.Path)
		r.Role(role).Signed.Targets[tf.Path] = tf
		if !slices.Contains(roles, role) {
			roles = append(roles, role)
		}
	}
	batch := make([]tuf.SignedMetadata, 0, len(roles))
	for _, role := range roles {
		md := r.Role(role)
		md.Signed.Version++
		md.Signed.Expires = r.opts.Now().Add(tuf.DefaultTargetsExpiry).UTC().Truncate(time.Second)
		batch = append(batch, r.sign(role, md))
	}
	return batch
}
