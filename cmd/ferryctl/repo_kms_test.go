package main

import (
	"bytes"
	"context"
	"crypto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature/kms"

	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/internal/kmsplugin"
)

// installKMSPlugin builds the test KMS plugin, puts it on PATH with an
// empty key store, and creates the named keys through the plugin.
func installKMSPlugin(t *testing.T, keys ...string) {
	t.Helper()
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(bin, "sigstore-kms-ferrytest"),
		"github.com/ferryhq/ferry/internal/kmsplugin/cmd/sigstore-kms-ferrytest")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the KMS plugin: %v\n%s", err, out)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv(kmsplugin.DirEnv, t.TempDir())
	for _, k := range keys {
		sv, err := kms.Get(context.Background(), "ferrytest://"+k, crypto.SHA256)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sv.CreateKey(context.Background(), kmsplugin.Algorithm); err != nil {
			t.Fatalf("create KMS key %s: %v", k, err)
		}
	}
}

// TestRepositoryKMSKeys runs the repository with root and targets keys in
// a KMS (a real sigstore CLI plugin process): init, publish, fetch as a
// device does, rotate to other KMS keys, and no passphrase anywhere.
func TestRepositoryKMSKeys(t *testing.T) {
	installKMSPlugin(t, "root-1", "root-2", "targets-1", "targets-2")
	t.Setenv("FERRY_PASSPHRASE", "") // a ring of KMS keys never asks for one
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	repo := []string{"--repo-dir", repoDir}
	fw := filepath.Join(dir, "fw.bin")
	fwData := bytes.Repeat([]byte("gateway firmware "), 1000)
	if err := os.WriteFile(fw, fwData, 0o600); err != nil {
		t.Fatal(err)
	}
	fetched := filepath.Join(dir, "fetched.bin")
	fetchedOK := func(t *testing.T) {
		got, err := os.ReadFile(fetched)
		if err != nil || !bytes.Equal(got, fwData) {
			t.Fatalf("fetched bundle differs (%v)", err)
		}
		os.Remove(fetched)
	}
	retired := func(pattern string) func(t *testing.T) {
		return func(t *testing.T) {
			m, _ := filepath.Glob(filepath.Join(repoDir, "keys", "retired", pattern))
			if len(m) != 1 {
				t.Fatalf("retired %s: %v", pattern, m)
			}
		}
	}

	tests := []cmdStep{
		{"init with a scheme nobody serves", []string{"repo", "init", "--repo-dir", filepath.Join(dir, "other"), "--root-kms", "nosuchkms://k", "--targets-kms", "ferrytest://targets-1"},
			nil, "no plugin sigstore-kms-nosuchkms on PATH", nil},
		{"init with a key the KMS lacks", []string{"repo", "init", "--repo-dir", filepath.Join(dir, "other2"), "--root-kms", "ferrytest://nope", "--targets-kms", "ferrytest://targets-1"},
			nil, "key nope does not exist", nil},
		{"init", append([]string{"repo", "init", "--root-kms", "ferrytest://root-1", "--targets-kms", "ferrytest://targets-1"}, repo...),
			[]string{"root v1 (1-of-1 keys), targets v1 (1-of-1 keys)"}, "", func(t *testing.T) {
				raw, err := os.ReadFile(filepath.Join(repoDir, "root.json"))
				if err != nil || !strings.Contains(string(raw), `"ecdsa-sha2-nistp256"`) {
					t.Fatalf("root names no ECDSA P-256 key (%v)", err)
				}
				if m, _ := filepath.Glob(filepath.Join(repoDir, "keys", "*.pem")); len(m) != 0 {
					t.Fatalf("PEM keys created beside the KMS keys: %v", m)
				}
			}},
		{"publish", append([]string{"bundle", "publish", fw, "--name", "gateway", "--version", "1.0.0", "-q"}, repo...), []string{"published gateway/1.0.0/fw.bin (17000 bytes", "targets v2"}, "", nil},
		{"fetch", append([]string{"bundle", "fetch", "gateway/1.0.0/fw.bin", "-O", fetched}, repo...), []string{"verified gateway/1.0.0/fw.bin"}, "", fetchedOK},
		{"remove", append([]string{"bundle", "remove", "gateway/1.0.0/fw.bin"}, repo...), []string{"removed gateway/1.0.0/fw.bin"}, "", nil},
		{"rotate targets to another KMS key", append([]string{"repo", "rotate-key", "targets", "--kms", "ferrytest://targets-2"}, repo...),
			[]string{"root v2", "1-of-1 new keys", "re-signed"}, "", retired("targets-*.kms")},
		{"rotate root to a KMS key and keep the other", append([]string{"repo", "rotate-key", "root", "--kms", "ferrytest://root-2", "--kms", "ferrytest://root-1", "--threshold", "2"}, repo...),
			[]string{"root v3", "2-of-2 new keys"}, "", nil},
		{"rotate root to one KMS key", append([]string{"repo", "rotate-key", "root", "--kms", "ferrytest://root-2"}, repo...),
			[]string{"root v4", "1-of-1 new keys"}, "", retired("root-*.kms")},
		{"publish after rotation", append([]string{"bundle", "publish", fw, "--name", "gateway", "--version", "2.0.0", "-q"}, repo...), []string{"published gateway/2.0.0/fw.bin"}, "", nil},
		{"fetch after rotation", append([]string{"bundle", "fetch", "gateway/2.0.0/fw.bin", "-O", fetched}, repo...), []string{"verified gateway/2.0.0/fw.bin"}, "", fetchedOK},
	}
	runSteps(t, f, tests)
}

// TestKMSProviders checks that ferryctl registers the cloud KMS providers
// (kms.go); other schemes go to plugins.
func TestKMSProviders(t *testing.T) {
	got := strings.Join(kms.SupportedProviders(), " ")
	for _, scheme := range []string{"awskms://", "azurekms://", "gcpkms://", "hashivault://"} {
		if !strings.Contains(got, scheme) {
			t.Errorf("provider %s is not registered (have %s)", scheme, got)
		}
	}
}
