package tuf_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// TestPublishRefusesInvalidVersion submits targets whose Ferry metadata
// carries each version, signed as ferryctl would but without its checks:
// the repository accepts SemVer 2.0 versions only, as invalid input, and
// publishes nothing when it refuses.
func TestPublishRefusesInvalidVersion(t *testing.T) {
	e := newEnv(t, 2)
	ctx := context.Background()
	tests := []struct {
		name   string
		custom string
		ok     bool
	}{
		{"release", `{"ferry":{"name":"gw","version":"1.2.0"}}`, true},
		{"pre-release", `{"ferry":{"name":"gw","version":"1.0.0-rc.10"}}`, true},
		{"build metadata", `{"ferry":{"name":"gw","version":"2.0.0+build5"}}`, true},
		{"leading v", `{"ferry":{"name":"gw","version":"v3.0.0"}}`, true},
		{"another tool's metadata", `{"other":{"version":"banana"}}`, true},
		{"not an object", `[1,2]`, true},
		{"shorthand", `{"ferry":{"name":"gw","version":"1.2"}}`, false},
		{"major only", `{"ferry":{"name":"gw","version":"1"}}`, false},
		{"date", `{"ferry":{"name":"gw","version":"2024.05a"}}`, false},
		{"leading zero", `{"ferry":{"name":"gw","version":"01.2.3"}}`, false},
		{"empty", `{"ferry":{"name":"gw","version":""}}`, false},
		{"missing", `{"ferry":{"name":"gw"}}`, false},
		{"wrong type", `{"ferry":{"name":"gw","version":2}}`, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(strings.Repeat("v", i+1))
			if err := e.repo.UploadBlob(ctx, int64(len(data)), tuftest.SHA256(data), bytes.NewReader(data)); err != nil {
				t.Fatal(err)
			}
			digest, _ := hex.DecodeString(tuftest.SHA256(data))
			raw := json.RawMessage(tc.custom)
			path := "gw/case" + strings.Repeat("x", i) + "/fw.bin"
			tf := &metadata.TargetFiles{Length: int64(len(data)), Hashes: metadata.Hashes{"sha256": digest}, Custom: &raw, Path: path}
			sm := e.rel.Edit(path, func(m map[string]*metadata.TargetFiles) { m[path] = tf })
			before := e.repo.Versions()
			_, err := e.repo.PublishTargets(ctx, []tuf.SignedMetadata{sm})
			if tc.ok {
				if err != nil {
					t.Fatalf("publish: %v", err)
				}
				return
			}
			// The release helper keeps what it signed; forget the refused target.
			delete(e.rel.Role(sm.Role).Signed.Targets, path)
			if tuf.KindOf(err) != tuf.KindInvalid {
				t.Fatalf("publish = %v, want an invalid-input error", err)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "semantic version") && !strings.Contains(err.Error(), `"ferry"`) {
				t.Errorf("error %q does not name the target and the rule", err)
			}
			if after := e.repo.Versions(); after != before {
				t.Errorf("versions changed on refusal: %+v -> %+v", before, after)
			}
			if _, err := e.repo.Bundle(path); tuf.KindOf(err) != tuf.KindNotFound {
				t.Errorf("refused bundle is listed: %v", err)
			}
		})
	}
}

func TestNewTargetFileRefusesInvalidVersion(t *testing.T) {
	sha := tuftest.SHA256([]byte("x"))
	for _, v := range []string{"1.0", "1", "", "latest", "1.0.0-", "1.0.0.0"} {
		if _, err := tuf.NewTargetFile("gw/fw.bin", 1, sha, tuf.BundleInfo{Name: "gw", Version: v}); tuf.KindOf(err) != tuf.KindInvalid {
			t.Errorf("NewTargetFile with version %q = %v, want an invalid-input error", v, err)
		}
	}
	for _, v := range []string{"1.0.0", "v1.0.0", "1.0.0-rc.1+b.2"} {
		if _, err := tuf.NewTargetFile("gw/fw.bin", 1, sha, tuf.BundleInfo{Name: "gw", Version: v}); err != nil {
			t.Errorf("NewTargetFile with version %q: %v", v, err)
		}
	}
}
