package sim_test

import (
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// TestPublishRefusesNonSemverVersion: targets signed with a version that
// is not SemVer 2.0 (as a tool other than ferryctl could sign them) are
// refused by ferryd with invalid_argument, naming the target.
func TestPublishRefusesNonSemverVersion(t *testing.T) {
	w := newWorld(t)
	ok := w.add(t, "gateway", "2.0.0", 4<<10, tuf.BundleInfo{})
	digest, _ := hex.DecodeString(tuftest.SHA256(ok.data))
	raw := json.RawMessage(`{"ferry":{"name":"gateway","version":"1.2"}}`)
	const path = "gateway/1.2/fw.bin"
	tf := &metadata.TargetFiles{Length: int64(len(ok.data)), Hashes: metadata.Hashes{"sha256": digest}, Custom: &raw, Path: path}
	md := w.rel.Edit(path, func(m map[string]*metadata.TargetFiles) { m[path] = tf })
	_, err := w.repo.PublishTargets(t.Context(), connect.NewRequest(&repositoryv1.PublishTargetsRequest{Role: md.Role, Metadata: md.Data}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), `target "gateway/1.2/fw.bin": version "1.2" is not a semantic version`) {
		t.Fatalf("publish with version 1.2 = %v, want invalid_argument naming the target and the rule", err)
	}
	if _, err := w.repo.GetBundle(t.Context(), connect.NewRequest(&repositoryv1.GetBundleRequest{TargetPath: path})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("refused bundle: %v, want not_found", err)
	}
}
