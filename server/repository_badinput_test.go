package server_test

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"google.golang.org/protobuf/proto"

	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// targetsDoc builds targets metadata for role, signed by signers.
func targetsDoc(t testing.TB, role string, version int64, expires time.Time, files map[string]*metadata.TargetFiles, signers ...signature.Signer) tuf.SignedMetadata {
	t.Helper()
	md := tuf.NewTargets(version, expires)
	md.Signed.Targets = files
	if err := tuf.Sign(md, signers...); err != nil {
		t.Fatal(err)
	}
	return tuf.SignedMetadata{Role: role, Data: tuftest.Bytes(t, md)}
}

// file describes a target without checking its path, as an attacker or a
// broken tool might.
func file(length int64, data []byte) *metadata.TargetFiles {
	sum := sha256.Sum256(data)
	return &metadata.TargetFiles{Length: length, Hashes: metadata.Hashes{"sha256": sum[:]}}
}

// repoState is what must not change when a request is refused.
type repoState struct {
	versions *repositoryv1.GetOnlineKeysResponse
	bundles  *repositoryv1.ListBundlesResponse
}

func (fx *repoFixture) state(t testing.TB) repoState {
	t.Helper()
	list, err := fx.client.ListBundles(context.Background(), connect.NewRequest(&repositoryv1.ListBundlesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return repoState{versions: fx.versions(t), bundles: list.Msg}
}

func TestPublishRefusesBadInput(t *testing.T) {
	fx := newRepoFixture(t, nil, tuftest.Options{})
	good := []byte("good bundle")
	fx.add(t, "camera/1.0/fw.bin", good)
	uploaded := []byte("uploaded, not yet published")
	if err := fx.upload(uint64(len(uploaded)), tuftest.SHA256(uploaded), uploaded); err != nil {
		t.Fatal(err)
	}
	cur := fx.rel.Top.Signed.Version
	later := time.Now().Add(24 * time.Hour)
	keys := fx.rel.Targets
	stranger := tuftest.Signers(t, 1)
	withGood := func(extra map[string]*metadata.TargetFiles) map[string]*metadata.TargetFiles {
		m := map[string]*metadata.TargetFiles{"camera/1.0/fw.bin": file(int64(len(good)), good)}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	okFile := map[string]*metadata.TargetFiles{"camera/1.1/fw.bin": file(int64(len(uploaded)), uploaded)}

	// Roots a client would refuse or that would hand ferryd an offline role.
	online := onlineKeys(t, fx.client)
	nextRoot := func(edit func(*tuf.RootParams), signers ...signature.Signer) []byte {
		p := tuf.RootParams{
			Version: 2, Expires: later,
			Root:     tuftest.RoleKeys(t, fx.rel.Root, 1),
			Targets:  tuftest.RoleKeys(t, keys, 1),
			Snapshot: online[metadata.SNAPSHOT], Timestamp: online[metadata.TIMESTAMP],
		}
		edit(&p)
		md, err := tuf.NewRoot(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := tuf.Sign(md, signers...); err != nil {
			t.Fatal(err)
		}
		return tuftest.Bytes(t, md)
	}
	newRootKey := tuftest.Signers(t, 1)
	other := []byte("a different bundle nobody uploaded")

	tests := []struct {
		name    string
		targets []tuf.SignedMetadata
		root    []byte
		upload  []byte // body of an upload declared as other's length and digest
		want    connect.Code
	}{
		{name: "unsigned targets", targets: []tuf.SignedMetadata{targetsDoc(t, "targets", cur+1, later, withGood(okFile))}, want: connect.CodeInvalidArgument},
		{name: "targets signed by an unknown key", targets: []tuf.SignedMetadata{targetsDoc(t, "targets", cur+1, later, withGood(okFile), stranger...)}, want: connect.CodeInvalidArgument},
		{name: "targets version not increasing", targets: []tuf.SignedMetadata{targetsDoc(t, "targets", cur, later, withGood(okFile), keys...)}, want: connect.CodeFailedPrecondition},
		{name: "targets already expired", targets: []tuf.SignedMetadata{targetsDoc(t, "targets", cur+1, time.Now().Add(-time.Hour), withGood(okFile), keys...)}, want: connect.CodeInvalidArgument},
		{name: "length differs from the blob", targets: []tuf.SignedMetadata{targetsDoc(t, "targets", cur+1, later, withGood(map[string]*metadata.TargetFiles{"camera/1.1/fw.bin": file(int64(len(uploaded))+1, uploaded)}), keys...)}, want: connect.CodeInvalidArgument},
		{name: "hash of no uploaded blob", targets: []tuf.SignedMetadata{targetsDoc(t, "targets", cur+1, later, withGood(map[string]*metadata.TargetFiles{"camera/1.1/fw.bin": file(3, []byte("abc"))}), keys...)}, want: connect.CodeFailedPrecondition},
		{name: "path traversal", targets: []tuf.SignedMetadata{targetsDoc(t, "targets", cur+1, later, withGood(map[string]*metadata.TargetFiles{"../../etc/passwd": file(int64(len(uploaded)), uploaded)}), keys...)}, want: connect.CodeInvalidArgument},
		{name: "absolute path", targets: []tuf.SignedMetadata{targetsDoc(t, "targets", cur+1, later, withGood(map[string]*metadata.TargetFiles{"/etc/passwd": file(int64(len(uploaded)), uploaded)}), keys...)}, want: connect.CodeInvalidArgument},
		{name: "not JSON", targets: []tuf.SignedMetadata{{Role: "targets", Data: []byte("{")}}, want: connect.CodeInvalidArgument},
		{name: "root metadata as targets", targets: []tuf.SignedMetadata{{Role: "targets", Data: fx.rel.RootJSON()}}, want: connect.CodeInvalidArgument},
		{name: "role not delegated", targets: []tuf.SignedMetadata{targetsDoc(t, "bins-0", 1, later, okFile, keys...)}, want: connect.CodeFailedPrecondition},
		{name: "bad role name", targets: []tuf.SignedMetadata{targetsDoc(t, "../root", 1, later, okFile, keys...)}, want: connect.CodeInvalidArgument},
		{name: "root version skipped", root: nextRoot(func(p *tuf.RootParams) { p.Version = 3 }, fx.rel.Root...), want: connect.CodeFailedPrecondition},
		{name: "root not signed by the current root keys", root: nextRoot(func(p *tuf.RootParams) { p.Root = tuftest.RoleKeys(t, newRootKey, 1) }, newRootKey...), want: connect.CodeInvalidArgument},
		{name: "root not signed by its own keys", root: nextRoot(func(p *tuf.RootParams) { p.Root = tuftest.RoleKeys(t, newRootKey, 1) }, fx.rel.Root...), want: connect.CodeInvalidArgument},
		{name: "root without ferryd's online keys", root: nextRoot(func(p *tuf.RootParams) { p.Timestamp = tuftest.RoleKeys(t, stranger, 1).Keys[0] }, fx.rel.Root...), want: connect.CodeInvalidArgument},
		{name: "root handing ferryd the targets role", root: nextRoot(func(p *tuf.RootParams) {
			p.Targets = tuf.RoleKeys{Keys: []*metadata.Key{online[metadata.SNAPSHOT]}, Threshold: 1}
		}, fx.rel.Root...), want: connect.CodeInvalidArgument},
		{name: "root unsigned", root: nextRoot(func(*tuf.RootParams) {}), want: connect.CodeInvalidArgument},
		{name: "upload shorter than declared", upload: other[:5], want: connect.CodeInvalidArgument},
		{name: "upload longer than declared", upload: append(other, '!'), want: connect.CodeInvalidArgument},
		{name: "upload with other bytes", upload: []byte("A different bundle nobody uploaded"), want: connect.CodeInvalidArgument},
	}
	before := fx.state(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			switch {
			case tt.targets != nil:
				_, err = fx.publish(tt.targets...)
			case tt.root != nil:
				_, err = fx.publishRoot(tt.root)
			default:
				err = fx.upload(uint64(len(other)), tuftest.SHA256(other), tt.upload)
			}
			if connect.CodeOf(err) != tt.want {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			t.Logf("refused: %v", err)
			after := fx.state(t)
			if !proto.Equal(after.versions, before.versions) || !proto.Equal(after.bundles, before.bundles) {
				t.Fatalf("the repository changed:\nbefore %v %v\nafter  %v %v", before.versions, before.bundles, after.versions, after.bundles)
			}
		})
	}

	// After all that, the valid publish still works.
	if _, err := fx.publish(targetsDoc(t, "targets", cur+1, later, withGood(okFile), keys...)); err != nil {
		t.Fatalf("valid publish after refusals: %v", err)
	}
}
