package sim_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/agent/sim"
	"github.com/ferryhq/ferry/delta"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// addPatch makes the patch from base to result, uploads it and publishes
// it as a patch target; it returns the patch's length.
func (w *world) addPatch(t *testing.T, base, result published, window int) int {
	t.Helper()
	dir := t.TempDir()
	open := func(name string, data []byte) *os.File {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	var patch bytes.Buffer
	if err := delta.Make(t.Context(), &patch, open("base", base.data), open("result", result.data), delta.Options{Window: window}); err != nil {
		t.Fatalf("delta.Make: %v", err)
	}
	w.upload(t, patch.Bytes())
	ref := func(p published) tuf.DeltaRef {
		return tuf.DeltaRef{Path: p.path, SHA256: tuftest.SHA256(p.data), Length: int64(len(p.data))}
	}
	tf, err := tuf.NewDeltaTargetFile(int64(patch.Len()), tuftest.SHA256(patch.Bytes()),
		tuf.BundleInfo{Name: "gateway", Version: "2.0.1", Published: time.Now().UTC().Truncate(time.Second)},
		tuf.DeltaInfo{Base: ref(base), Result: ref(result), Format: delta.Format, Window: window})
	if err != nil {
		t.Fatal(err)
	}
	w.publish(t, w.rel.Edit(tf.Path, func(m map[string]*metadata.TargetFiles) { m[tf.Path] = tf }))
	return patch.Len()
}

// TestFleetDeltaUpdate updates simulated fleets from v2.0.0 to a point
// release v2.0.1 that has a signed patch from v2.0.0: devices that keep
// their bundles' bytes download only the patch, devices that cannot give
// the agent their running bundle download the whole bundle, and the fleet
// view records which way and how many bytes each job took.
func TestFleetDeltaUpdate(t *testing.T) {
	w := newWorld(t)
	v200data := make([]byte, 192<<10)
	rand.Read(v200data)
	v201data := bytes.Clone(v200data)
	rand.Read(v201data[100<<10 : 101<<10])
	v200 := w.addData(t, "gateway", "2.0.0", v200data, tuf.BundleInfo{})
	v201 := w.addData(t, "gateway", "2.0.1", v201data, tuf.BundleInfo{})
	patchLen := w.addPatch(t, v200, v201, 64<<10)
	t.Logf("bundle %d bytes, patch %d bytes", len(v201data), patchLen)

	const n = 5
	tests := []struct {
		label      string
		keep       bool
		wantMethod devicev1.DownloadMethod
		wantBytes  int
	}{
		{label: "keeps", keep: true, wantMethod: devicev1.DownloadMethod_DOWNLOAD_METHOD_DELTA, wantBytes: patchLen},
		{label: "digests", keep: false, wantMethod: devicev1.DownloadMethod_DOWNLOAD_METHOD_FULL, wantBytes: len(v201data)},
	}
	for _, tc := range tests {
		t.Run(tc.label, func(t *testing.T) {
			fl := w.startFleetWith(t, tc.label+"-", tc.label, n, "", sim.Faults{}, func(c *sim.Config) { c.KeepBundles = tc.keep })
			for _, d := range w.setDesired(t, fl, tc.label, &devicev1.DesiredDocument{Bundle: v200.bundle()}) {
				if j := d.GetJob(); j.GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED || j.GetDownloadMethod() != devicev1.DownloadMethod_DOWNLOAD_METHOD_FULL {
					t.Fatalf("%s: first install %s %s", d.GetId(), j.GetStatus(), j.GetDownloadMethod())
				}
			}
			before := fl.Stats.Downloaded.Load()
			for _, d := range w.setDesired(t, fl, tc.label, &devicev1.DesiredDocument{Bundle: v201.bundle()}) {
				j := d.GetJob()
				if j.GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED || d.GetReported().GetState().GetBundle().GetSha256() != tuftest.SHA256(v201data) {
					t.Errorf("%s: job %s %s %s, runs %v", d.GetId(), j.GetStatus(), j.GetErrorCode(), j.GetMessage(), d.GetReported().GetState().GetBundle())
				}
				if j.GetDownloadMethod() != tc.wantMethod || j.GetBytesDownloaded() != uint64(tc.wantBytes) {
					t.Errorf("%s: %s, %d bytes; want %s, %d bytes", d.GetId(), j.GetDownloadMethod(), j.GetBytesDownloaded(), tc.wantMethod, tc.wantBytes)
				}
			}
			if got := fl.Stats.Downloaded.Load() - before; got != int64(n*tc.wantBytes) {
				t.Errorf("the fleet downloaded %d bytes for the update, want %d", got, n*tc.wantBytes)
			}
			wantPatched := int64(0)
			if tc.keep {
				wantPatched = n
			}
			if got := fl.Stats.Patched.Load(); got != wantPatched {
				t.Errorf("%d installs from a patch, want %d", got, wantPatched)
			}
			t.Log(fl.Summary())
		})
	}
}
