package server_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-cmp/cmp"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"

	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/proto/ferry/repository/v1/repositoryv1connect"
	"github.com/ferryhq/ferry/server"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// The attacks of the TUF threat model, each against a real ferryd and
// go-tuf's updater: the client must refuse, and the metadata it trusts
// must stay as it was. Attackers either sit between device and ferryd
// (attackFetcher), hold ferryd's online keys (a compromised ferryd), or
// write to the repository's storage.

// dataDir returns the ferryd's data directory.
func (fx *repoFixture) dataDir() string { return filepath.Dir(filepath.Dir(fx.f.Dev.CACert)) }

// get fetches a metadata file as an operator.
func (fx *repoFixture) get(t testing.TB, name string) []byte {
	t.Helper()
	resp, err := fx.operatorHTTP(t).Get(fx.f.APIURL() + "/tuf/metadata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", name, resp.StatusCode, err)
	}
	return raw
}

// stolenKey loads ferryd's online key for role, as an attacker who took
// over the server would.
func (fx *repoFixture) stolenKey(t testing.TB, role string) signature.Signer {
	t.Helper()
	s, err := tuf.LoadSigner(filepath.Join(fx.dataDir(), "tuf-keys", role+".pem"), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// attackFetcher answers some URLs (by last path element) with the
// attacker's bytes and passes the rest through.
type attackFetcher struct {
	next  fetcher.Fetcher
	serve map[string][]byte
}

func (a attackFetcher) DownloadFile(url string, maxLength int64, d time.Duration) ([]byte, error) {
	for name, data := range a.serve {
		if strings.HasSuffix(url, "/"+name) {
			if int64(len(data)) > maxLength {
				return nil, &metadata.ErrDownloadLengthMismatch{Msg: "too long"}
			}
			return data, nil
		}
	}
	return a.next.DownloadFile(url, maxLength, d)
}

// attacked returns the same client (same trusted cache) behind an attacker.
func (c *tufClient) attacked(serve map[string][]byte) *tufClient {
	a := *c
	a.fetcher = attackFetcher{next: c.fetcher, serve: serve}
	return &a
}

// refuses checks that refresh (and, if path is set, the download of path)
// fails and that the trusted metadata did not change: all of it, or the
// roles in only. (The client keeps a validly signed timestamp as soon as
// it verifies, before it looks at the snapshot; so an attack on snapshot
// or targets that comes with a genuine or stolen-key timestamp leaves the
// timestamp newer and everything under it unchanged.)
func (c *tufClient) refuses(t *testing.T, path string, only ...string) {
	t.Helper()
	pick := func(m map[string]int64) map[string]int64 {
		if len(only) == 0 {
			return m
		}
		out := map[string]int64{}
		for _, r := range only {
			out[r] = m[r]
		}
		return out
	}
	before := pick(c.trusted())
	u, err := c.refresh()
	if err == nil && path != "" {
		var tf *metadata.TargetFiles
		if tf, err = u.GetTargetInfo(path); err == nil {
			_, _, err = u.DownloadTarget(tf, "", "")
		}
	}
	if err == nil {
		t.Fatal("the client accepted the attack")
	}
	t.Logf("refused: %v", err)
	if diff := cmp.Diff(before, pick(c.trusted())); diff != "" {
		t.Fatalf("trusted metadata changed (-before +after):\n%s", diff)
	}
	if path != "" {
		if _, err := os.Stat(filepath.Join(c.dir, "targets", strings.ReplaceAll(path, "/", "%2F"))); err == nil {
			t.Fatal("the refused target was written to the client's disk")
		}
	}
}

// signed parses, edits and re-signs metadata with key.
func resign[T metadata.Roles](t testing.TB, raw []byte, key signature.Signer, edit func(*T)) []byte {
	t.Helper()
	md := &metadata.Metadata[T]{}
	if _, err := md.FromBytes(raw); err != nil {
		t.Fatal(err)
	}
	edit(&md.Signed)
	md.Signatures = nil
	if err := tuf.Sign(md, key); err != nil {
		t.Fatal(err)
	}
	return tuftest.Bytes(t, md)
}

func metaFile(version int64, raw []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(raw)
	return &metadata.MetaFiles{Version: version, Length: int64(len(raw)), Hashes: metadata.Hashes{"sha256": sum[:]}}
}

// attackSetup publishes two bundles in two steps with a client refresh
// after each, and returns the fixture, the client, and the bytes of the
// metadata of the first step.
func attackSetup(t *testing.T, opts tuftest.Options) (*repoFixture, *tufClient, map[string][]byte) {
	fx := newRepoFixture(t, nil, opts)
	c := fx.tufClient(t, fx.operatorHTTP(t))
	fx.add(t, "camera/1.0/fw.bin", []byte("camera 1.0"))
	if _, err := c.refresh(); err != nil {
		t.Fatal(err)
	}
	v := fx.versions(t)
	old := map[string][]byte{
		"timestamp": fx.get(t, "timestamp.json"),
		"snapshot":  fx.get(t, fmt.Sprintf("%d.snapshot.json", v.GetSnapshotVersion())),
		"targets":   fx.get(t, fmt.Sprintf("%d.targets.json", v.GetTargetsVersion())),
	}
	fx.add(t, "camera/1.1/fw.bin", []byte("camera 1.1"))
	if _, err := c.refresh(); err != nil {
		t.Fatal(err)
	}
	return fx, c, old
}

func TestAttackRollbackTimestamp(t *testing.T) {
	_, c, old := attackSetup(t, tuftest.Options{})
	c.attacked(map[string][]byte{"timestamp.json": old["timestamp"]}).refuses(t, "")
}

func TestAttackRollbackSnapshot(t *testing.T) {
	fx, c, old := attackSetup(t, tuftest.Options{})
	// A compromised ferryd signs a newer timestamp naming the old snapshot.
	cur := fx.versions(t)
	var oldSnap metadata.SnapshotType
	mustParse(t, old["snapshot"], &oldSnap)
	ts := resign[metadata.TimestampType](t, fx.get(t, "timestamp.json"), fx.stolenKey(t, metadata.TIMESTAMP), func(s *metadata.TimestampType) {
		s.Version = int64(cur.GetTimestampVersion()) + 1
		s.Meta["snapshot.json"] = metaFile(oldSnap.Version, old["snapshot"])
	})
	c.attacked(map[string][]byte{"timestamp.json": ts}).refuses(t, "")
}

func TestAttackRollbackTargets(t *testing.T) {
	fx, c, old := attackSetup(t, tuftest.Options{})
	// A compromised ferryd signs a newer snapshot naming the old targets.
	cur := fx.versions(t)
	var oldTargets metadata.TargetsType
	mustParse(t, old["targets"], &oldTargets)
	newSnapVersion := int64(cur.GetSnapshotVersion()) + 1
	snap := resign[metadata.SnapshotType](t, fx.get(t, fmt.Sprintf("%d.snapshot.json", cur.GetSnapshotVersion())), fx.stolenKey(t, metadata.SNAPSHOT), func(s *metadata.SnapshotType) {
		s.Version = newSnapVersion
		s.Meta["targets.json"] = &metadata.MetaFiles{Version: oldTargets.Version}
	})
	ts := resign[metadata.TimestampType](t, fx.get(t, "timestamp.json"), fx.stolenKey(t, metadata.TIMESTAMP), func(s *metadata.TimestampType) {
		s.Version = int64(cur.GetTimestampVersion()) + 1
		s.Meta["snapshot.json"] = metaFile(newSnapVersion, snap)
	})
	c.attacked(map[string][]byte{
		"timestamp.json": ts,
		fmt.Sprintf("%d.snapshot.json", newSnapVersion):    snap,
		fmt.Sprintf("%d.targets.json", oldTargets.Version): old["targets"],
	}).refuses(t, "", "root", "snapshot", "targets")
}

func TestAttackFreeze(t *testing.T) {
	_, c, _ := attackSetup(t, tuftest.Options{})
	// The attacker keeps serving the last timestamp; two days on it has
	// expired (ferryd re-signs daily, the attacker withholds it).
	before := c.trusted()
	u := c.updater(nil)
	u.UnsafeSetRefTime(time.Now().Add(48 * time.Hour))
	err := u.Refresh()
	var expired *metadata.ErrExpiredMetadata
	if !errors.As(err, &expired) {
		t.Fatalf("refresh with a frozen timestamp = %v, want expired metadata", err)
	}
	if diff := cmp.Diff(before, c.trusted()); diff != "" {
		t.Fatalf("trusted metadata changed:\n%s", diff)
	}
}

func TestAttackMixAndMatch(t *testing.T) {
	tests := []struct {
		name  string
		serve func(fx *repoFixture, old map[string][]byte) map[string][]byte
		// unchanged: the roles under attack and above them; the genuine
		// newer metadata before them is accepted.
		unchanged []string
	}{
		{"snapshot of another version under the current name", func(fx *repoFixture, old map[string][]byte) map[string][]byte {
			return map[string][]byte{fmt.Sprintf("%d.snapshot.json", fx.versions(t).GetSnapshotVersion()): old["snapshot"]}
		}, []string{"root", "snapshot", "targets"}},
		{"targets of another version under the current name", func(fx *repoFixture, old map[string][]byte) map[string][]byte {
			return map[string][]byte{fmt.Sprintf("%d.targets.json", fx.versions(t).GetTargetsVersion()): old["targets"]}
		}, []string{"root", "targets"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fx, c, old := attackSetup(t, tuftest.Options{})
			fx.add(t, "camera/1.2/fw.bin", []byte("camera 1.2"))
			c.attacked(tt.serve(fx, old)).refuses(t, "", tt.unchanged...)
		})
	}
}

func TestAttackArbitrarySoftware(t *testing.T) {
	fx, _, _ := attackSetup(t, tuftest.Options{})
	c := fx.tufClient(t, fx.operatorHTTP(t))
	good := []byte("camera 1.1")
	evil := []byte("EVIL 1.1!!")
	blob := filepath.Join(fx.dataDir(), "repository", filepath.FromSlash(tuf.BlobKey(tuftest.SHA256(good))))
	if err := os.WriteFile(blob, evil, 0o600); err != nil {
		t.Fatal(err)
	}
	u, err := c.refresh()
	if err != nil {
		t.Fatal(err)
	}
	tf, err := u.GetTargetInfo("camera/1.1/fw.bin")
	if err != nil {
		t.Fatal(err)
	}
	if _, data, err := u.DownloadTarget(tf, "", ""); err == nil {
		t.Fatalf("the client accepted replaced bytes %q", data)
	} else {
		t.Logf("refused: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.dir, "targets", "camera%2F1.1%2Ffw.bin")); err == nil {
		t.Fatal("the replaced target was written to the client's disk")
	}
}

func TestAttackEndlessData(t *testing.T) {
	endless := bytes.Repeat([]byte(" "), 4<<20)
	t.Run("endless timestamp from the network", func(t *testing.T) {
		_, c, _ := attackSetup(t, tuftest.Options{})
		c.attacked(map[string][]byte{"timestamp.json": endless}).refuses(t, "")
	})
	t.Run("endless timestamp in the storage", func(t *testing.T) {
		// ferryd checks what it loads (the timestamp must be signed by the
		// root's timestamp key, and name the snapshot stored): it keeps
		// serving the last good timestamp, and the client moves on.
		fx, c, _ := attackSetup(t, tuftest.Options{})
		good := fx.get(t, "timestamp.json")
		if err := os.WriteFile(filepath.Join(fx.dataDir(), "repository", "metadata", "timestamp.json"), endless, 0o600); err != nil {
			t.Fatal(err)
		}
		if got := fx.get(t, "timestamp.json"); !bytes.Equal(got, good) {
			t.Fatalf("ferryd serves %d bytes of tampered timestamp", len(got))
		}
		if _, err := c.refresh(); err != nil {
			t.Fatalf("refresh with the last good timestamp: %v", err)
		}
	})
	t.Run("endless target in the storage", func(t *testing.T) {
		fx, c, _ := attackSetup(t, tuftest.Options{})
		blob := filepath.Join(fx.dataDir(), "repository", filepath.FromSlash(tuf.BlobKey(tuftest.SHA256([]byte("camera 1.1")))))
		if err := os.WriteFile(blob, endless, 0o600); err != nil {
			t.Fatal(err)
		}
		c.refuses(t, "camera/1.1/fw.bin")
	})
}

func TestAttackSignaturesBelowThreshold(t *testing.T) {
	fx, c, _ := attackSetup(t, tuftest.Options{RootKeys: 3, RootThreshold: 2})
	// An attacker with one of three root keys (threshold 2) makes root 2
	// handing the targets role to a key of their own.
	evil := tuftest.Signers(t, 1)
	next, err := tuf.NextRoot(fx.rel.RootMD, metadata.TARGETS, tuftest.RoleKeys(t, evil, 1), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := tuf.Sign(next, fx.rel.Root[0]); err != nil {
		t.Fatal(err)
	}
	raw := tuftest.Bytes(t, next)
	// ferryd refuses it...
	if _, err := fx.publishRoot(raw); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("PublishRoot below threshold = %v, want InvalidArgument", err)
	}
	// ...and so does the client when the attacker writes it to storage.
	if err := os.WriteFile(filepath.Join(fx.dataDir(), "repository", "metadata", "2.root.json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	c.refuses(t, "")
}

func TestAttackFastForwardRecovery(t *testing.T) {
	fx, c, _ := attackSetup(t, tuftest.Options{})
	// With ferryd's stolen timestamp key, an attacker fast-forwards the
	// client to timestamp version 1000...
	ts := resign[metadata.TimestampType](t, fx.get(t, "timestamp.json"), fx.stolenKey(t, metadata.TIMESTAMP), func(s *metadata.TimestampType) {
		s.Version = 1000
	})
	if _, err := c.attacked(map[string][]byte{"timestamp.json": ts}).refresh(); err != nil {
		t.Fatalf("fast-forward: %v", err)
	}
	if got := c.trusted()["timestamp"]; got != 1000 {
		t.Fatalf("trusted timestamp %d, want the attacker's 1000", got)
	}
	// ...so ferryd's real timestamps now look like a rollback.
	fx.add(t, "camera/1.2/fw.bin", []byte("camera 1.2"))
	c.refuses(t, "")

	// Recovery: ferryd gets a new timestamp key (stop, remove the stolen
	// key, start), and the release engineer publishes a root naming it.
	dir := fx.dataDir()
	if err := fx.f.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "tuf-keys", "timestamp.pem")); err != nil {
		t.Fatal(err)
	}
	fx.f = ferrytest.Start(t, ferrytest.Embedded, func(cfg *server.Config) { cfg.DataDir = dir })
	fx.client = newRepoClient(t, fx.f)
	online := onlineKeys(t, fx.client)
	root, err := tuf.NewRoot(tuf.RootParams{
		Version: 2, Expires: time.Now().Add(tuf.DefaultRootExpiry),
		Root:     tuf.RootKeysOf(fx.rel.RootMD, metadata.ROOT),
		Targets:  tuf.RootKeysOf(fx.rel.RootMD, metadata.TARGETS),
		Snapshot: online[metadata.SNAPSHOT], Timestamp: online[metadata.TIMESTAMP],
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tuf.Sign(root, fx.rel.Root...); err != nil {
		t.Fatal(err)
	}
	if _, err := fx.publishRoot(tuftest.Bytes(t, root)); err != nil {
		t.Fatal(err)
	}
	u, err := c.refresh()
	if err != nil {
		t.Fatalf("refresh after the rotation: %v", err)
	}
	if got := c.trusted(); got["root"] != 2 || got["timestamp"] >= 1000 {
		t.Fatalf("after recovery the client trusts %v", got)
	}
	if _, err := u.GetTargetInfo("camera/1.2/fw.bin"); err != nil {
		t.Fatalf("the bundle published during the attack: %v", err)
	}
}

func mustParse(t testing.TB, raw []byte, signed any) {
	t.Helper()
	var doc struct {
		Signed any `json:"signed"`
	}
	doc.Signed = signed
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
}

func newRepoClient(t testing.TB, f *ferrytest.Ferryd) repositoryv1connect.RepositoryServiceClient {
	return repositoryv1connect.NewRepositoryServiceClient(f.HTTPClient(t), f.APIURL(), ferrytest.Bearer(f.OperatorToken(t)))
}

// TestAttackArbitrarySoftwarePatch replaces a published patch's bytes in
// the storage: with the same length (the signed SHA-256 refuses them),
// longer (the signed length does), or with another genuine patch.
func TestAttackArbitrarySoftwarePatch(t *testing.T) {
	const n = 100 << 10
	v1, v2, v3 := firmware(1, n), firmware(2, n), firmware(3, n)
	tests := []struct {
		name   string
		tamper func(patch []byte) []byte
	}{
		{"same length, other bytes", func(p []byte) []byte { p = bytes.Clone(p); p[len(p)/2] ^= 1; return p }},
		{"longer", func(p []byte) []byte { return append(bytes.Clone(p), bytes.Repeat([]byte{0}, 4<<20)...) }},
		{"another genuine patch", func([]byte) []byte { return makePatch(t, v1, v3) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fx := newRepoFixture(t, nil, tuftest.Options{BinBits: 1})
			fx.add(t, "camera/1.0.0/fw.bin", v1)
			fx.add(t, "camera/2.0.0/fw.bin", v2)
			path, patch := fx.addPatch(t, "camera/1.0.0/fw.bin", v1, "camera/2.0.0/fw.bin", v2)
			c := fx.tufClient(t, fx.operatorHTTP(t))
			if _, err := c.refresh(); err != nil {
				t.Fatal(err)
			}
			blob := filepath.Join(fx.dataDir(), "repository", filepath.FromSlash(tuf.BlobKey(tuftest.SHA256(patch))))
			if err := os.WriteFile(blob, tc.tamper(patch), 0o600); err != nil {
				t.Fatal(err)
			}
			c.refuses(t, path)
		})
	}
}
