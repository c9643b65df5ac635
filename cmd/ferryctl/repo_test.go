package main

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/ferryhq/ferry/internal/ferrytest"
)

// TestRepositoryCommands walks the README: init a repository, publish,
// list, show and remove bundles, rotate keys; and a device that only knows
// the first root verifies and downloads with go-tuf's updater.
func TestRepositoryCommands(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	passFile := filepath.Join(dir, "pass")
	if err := os.WriteFile(passFile, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fw := filepath.Join(dir, "fw.bin")
	fwData := bytes.Repeat([]byte("camera firmware "), 40000) // 640 KB: several chunks
	if err := os.WriteFile(fw, fwData, 0o600); err != nil {
		t.Fatal(err)
	}
	repo := []string{"--repo-dir", repoDir, "--passphrase-file", passFile}
	var firstRoot []byte

	tests := []cmdStep{
		{"status before init", []string{"repo", "status"}, []string{"no repository yet"}, "", nil},
		{"publish before init", append([]string{"bundle", "publish", fw, "--name", "camera", "--version", "1.0.0"}, repo...), nil, "trusted root", nil},
		{"init", append([]string{"repo", "init", "--root-keys", "3", "--root-threshold", "2", "--hash-bins", "16"}, repo...),
			[]string{"root v1 (2-of-3 keys)", "16 hash bins"}, "", func(t *testing.T) {
				var err error
				if firstRoot, err = os.ReadFile(filepath.Join(repoDir, "root.json")); err != nil {
					t.Fatal(err)
				}
			}},
		{"init twice", append([]string{"repo", "init"}, repo...), nil, "already holds a repository", nil},
		{"publish", append([]string{"bundle", "publish", fw, "--name", "camera", "--version", "1.0.0", "--hardware", "cam-a",
			"--release-notes", "first", "-q"}, repo...), []string{"published camera/1.0.0/fw.bin (640000 bytes", "bins-"}, "", nil},
		{"publish another", append([]string{"bundle", "publish", fw, "--name", "camera", "--version", "1.1.0", "--path", "camera/1.1.0/fw.bin", "-q"}, repo...), []string{"published camera/1.1.0/fw.bin"}, "", nil},
		{"wrong passphrase", []string{"bundle", "publish", fw, "--name", "x", "--version", "1.0.0", "--repo-dir", repoDir, "--passphrase-file", fw, "-q"}, nil, "passphrase", nil},
		{"list", []string{"bundle", "list"}, []string{"PATH", "camera/1.0.0/fw.bin", "camera/1.1.0/fw.bin", "640000"}, "", nil},
		{"status", []string{"repo", "status"}, []string{"ROLE", "root", "targets", "snapshot", "timestamp", "bins-", "offline keys", "ferryd", "ok"}, "", nil},
		{"status as JSON", []string{"repo", "status", "-o", "json"}, []string{`"role": "timestamp"`, `"online": true`, `"expireTime"`}, "", nil},
		{"show", []string{"bundle", "show", "camera/1.0.0/fw.bin"}, []string{"cam-a", "first", "bins-"}, "", nil},
		{"show as JSON", []string{"bundle", "show", "camera/1.0.0/fw.bin", "-o", "json"}, []string{`"releaseNotes"`, `"first"`}, "", nil},
		{"remove", append([]string{"bundle", "remove", "camera/1.1.0/fw.bin"}, repo...), []string{"removed camera/1.1.0/fw.bin"}, "", nil},
		{"show removed", []string{"bundle", "show", "camera/1.1.0/fw.bin"}, nil, "not_found", nil},
		{"rotate targets", append([]string{"repo", "rotate-key", "targets"}, repo...), []string{"root v2", "re-signed"}, "", nil},
		{"rotate root", append([]string{"repo", "rotate-key", "root", "--keys", "2", "--threshold", "2"}, repo...), []string{"root v3", "2-of-2"}, "", nil},
		{"publish after rotation", append([]string{"bundle", "publish", fw, "--name", "camera", "--version", "2.0.0", "-q"}, repo...), []string{"published camera/2.0.0/fw.bin"}, "", nil},
		{"rotate to ferryd's snapshot key", append([]string{"repo", "rotate-key", "snapshot"}, repo...), []string{"root v4", "snapshot is ferryd's key"}, "", nil},
		{"rotate an unknown role", append([]string{"repo", "rotate-key", "bins"}, repo...), nil, "want root, targets", nil},
		{"delegate beside hash bins", append([]string{"repo", "delegate", "gateway", "--path", "gateway/*/*"}, repo...), nil, "hash bins", nil},
	}
	runSteps(t, f, tests)

	// A device shipped with root v1 follows both rotations and verifies
	// the bundle published after them.
	cfg, err := config.New(f.APIURL()+"/tuf/metadata", firstRoot)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RemoteTargetsURL = f.APIURL() + "/tuf/targets"
	cfg.LocalMetadataDir, cfg.LocalTargetsDir = t.TempDir(), t.TempDir()
	fe := fetcher.NewDefaultFetcher()
	fe.SetHTTPClient(&httpClientWithBearer{f: f, t: t})
	cfg.Fetcher = fe
	u, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Refresh(); err != nil {
		t.Fatalf("device refresh: %v", err)
	}
	if v := u.GetTrustedMetadataSet().Root.Signed.Version; v != 4 {
		t.Fatalf("device trusts root v%d, want 4", v)
	}
	tf, err := u.GetTargetInfo("camera/2.0.0/fw.bin")
	if err != nil {
		t.Fatal(err)
	}
	_, got, err := u.DownloadTarget(tf, "", "")
	if err != nil || !bytes.Equal(got, fwData) {
		t.Fatalf("download: %v", err)
	}
	if _, err := u.GetTargetInfo("camera/1.1.0/fw.bin"); err == nil {
		t.Fatal("the removed bundle is still found")
	}
}

// httpClientWithBearer sends the development operator's API key.
type httpClientWithBearer struct {
	f *ferrytest.Ferryd
	t *testing.T
}

func (c *httpClientWithBearer) Do(r *http.Request) (*http.Response, error) {
	r.Header.Set("Authorization", "Bearer "+c.f.OperatorToken(c.t))
	return c.f.HTTPClient(c.t).Do(r)
}

// cmdStep is one ferryctl command of a scripted session: what its output
// must contain, or the error it must fail with, and a check to run after.
type cmdStep struct {
	name    string
	args    []string
	want    []string
	wantErr string
	after   func(t *testing.T)
}

// runSteps runs the steps in order against f, stopping at the first one
// that does not do what it should.
func runSteps(t *testing.T, f *ferrytest.Ferryd, steps []cmdStep) {
	t.Helper()
	for _, st := range steps {
		out, err := run(t, f, st.args...)
		if st.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), st.wantErr) {
				t.Fatalf("%s: error %v, want %q\n%s", st.name, err, st.wantErr, out)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v\n%s", st.name, err, out)
		}
		for _, w := range st.want {
			if !strings.Contains(out, w) {
				t.Fatalf("%s: output lacks %q:\n%s", st.name, w, out)
			}
		}
		if st.after != nil {
			st.after(t)
		}
	}
}
