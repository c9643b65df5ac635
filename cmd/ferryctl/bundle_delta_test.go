package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/ferryhq/ferry/delta"
	"github.com/ferryhq/ferry/internal/ferrytest"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// TestBundlePublishDelta publishes three versions of a bundle: the second
// with a patch from the first, the third (unrelated bytes) with patches
// that are not worth it, and checks that the published patch turns the
// first into the second.
func TestBundlePublishDelta(t *testing.T) {
	f := ferrytest.Start(t, ferrytest.Embedded, nil)
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	passFile := filepath.Join(dir, "pass")
	if err := os.WriteFile(passFile, []byte("correct horse battery staple\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	v1 := make([]byte, 700<<10)
	for i := range v1 {
		v1[i] = byte(r.Uint32())
	}
	v2 := bytes.Clone(v1)
	copy(v2[300<<10:], "a point release changes a few bytes")
	v3 := make([]byte, 700<<10)
	for i := range v3 {
		v3[i] = byte(r.Uint32())
	}
	write := func(version string, data []byte) string {
		p := filepath.Join(dir, version, "fw.bin")
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	fw1, fw2, fw3 := write("1", v1), write("2", v2), write("3", v3)
	repo := []string{"--repo-dir", repoDir, "--passphrase-file", passFile, "-q"}
	patchPath := tuf.DeltaPath("camera/2.0.0/fw.bin", tuftest.SHA256(v1))
	got := filepath.Join(dir, "patch")

	runSteps(t, f, []cmdStep{
		{"init", append([]string{"repo", "init", "--hash-bins", "16"}, repo...), []string{"16 hash bins"}, "", nil},
		{"publish the first", append([]string{"bundle", "publish", fw1, "--name", "camera", "--version", "1.0.0"}, repo...), []string{"published camera/1.0.0/fw.bin"}, "", nil},
		{"a base that is not published", append([]string{"bundle", "publish", fw2, "--name", "camera", "--version", "2.0.0", "--delta-from", "0.9.0"}, repo...), nil, "no target camera/0.9.0/fw.bin", nil},
		{"a bad ratio", append([]string{"bundle", "publish", fw2, "--name", "camera", "--version", "2.0.0", "--delta-from", "1.0.0", "--delta-max-ratio", "0"}, repo...), nil, "--delta-max-ratio", nil},
		{"a bad window", append([]string{"bundle", "publish", fw2, "--name", "camera", "--version", "2.0.0", "--delta-from", "1.0.0", "--delta-window", "1000000"}, repo...), nil, "--delta-window", nil},
		{"publish the second with a patch", append([]string{"bundle", "publish", fw2, "--name", "camera", "--version", "2.0.0", "--delta-from", "1.0.0", "--delta-window", "262144"}, repo...),
			[]string{"published camera/2.0.0/fw.bin (716800 bytes", "published patch " + patchPath + " from camera/1.0.0/fw.bin"}, "", nil},
		{"show the patch", []string{"bundle", "show", patchPath}, []string{patchPath, "2.0.0"}, "", nil},
		{"fetch the patch", append([]string{"bundle", "fetch", patchPath, "-O", got}, repo...), []string{"verified " + patchPath}, "", nil},
		{"publish the third, patches not worth it", append([]string{"bundle", "publish", fw3, "--name", "camera", "--version", "3.0.0", "--delta-from", "1.0.0,camera/2.0.0/fw.bin"}, repo...),
			[]string{"skipped the patch from camera/1.0.0/fw.bin", "skipped the patch from camera/2.0.0/fw.bin", "more than --delta-max-ratio 50%", "published camera/3.0.0/fw.bin"}, "", nil},
		{"the skipped patch is not published", []string{"bundle", "show", tuf.DeltaPath("camera/3.0.0/fw.bin", tuftest.SHA256(v1))}, nil, "not_found", nil},
	})

	base, err := os.Open(fw1)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	p, err := os.Open(got)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var out bytes.Buffer
	if err := delta.Apply(context.Background(), &out, base, p, delta.Options{Window: 262144}); err != nil {
		t.Fatalf("Apply the published patch: %v", err)
	}
	if !bytes.Equal(out.Bytes(), v2) {
		t.Fatal("the published patch does not make the second version from the first")
	}
}
