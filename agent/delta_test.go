package agent_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/agent"
	"github.com/ferryhq/ferry/delta"
	devicev1 "github.com/ferryhq/ferry/proto/ferry/device/v1"
	fleetv1 "github.com/ferryhq/ferry/proto/ferry/fleet/v1"
	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// deltaWindow is the window of the test's patches.
const deltaWindow = 64 << 10

// addPatch makes the patch from base to result with the delta package,
// uploads it and publishes it as its own target, at the path devices
// compute, with the signed metadata naming its base and result. It
// returns the patch's target path and bytes.
func (w *world) addPatch(t *testing.T, baseB *devicev1.Bundle, base []byte, resB *devicev1.Bundle, result []byte) (string, []byte) {
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
	if err := delta.Make(t.Context(), &patch, open("base", base), open("result", result), delta.Options{Window: deltaWindow}); err != nil {
		t.Fatalf("delta.Make: %v", err)
	}
	w.upload(t, patch.Bytes())
	ref := func(b *devicev1.Bundle) tuf.DeltaRef {
		return tuf.DeltaRef{Path: b.GetTargetPath(), SHA256: b.GetSha256(), Length: int64(b.GetLength())}
	}
	tf, err := tuf.NewDeltaTargetFile(int64(patch.Len()), tuftest.SHA256(patch.Bytes()),
		tuf.BundleInfo{Name: "test", Version: "1.0.0", Published: time.Now().UTC().Truncate(time.Second)},
		tuf.DeltaInfo{Base: ref(baseB), Result: ref(resB), Format: delta.Format, Window: deltaWindow})
	if err != nil {
		t.Fatal(err)
	}
	path := tf.Path
	if want := agent.PatchPath(resB.GetTargetPath(), baseB.GetSha256()); path != want {
		t.Fatalf("the repository publishes the patch at %q, devices look for it at %q", path, want)
	}
	w.mu.Lock()
	md := w.rel.Edit(path, func(m map[string]*metadata.TargetFiles) { m[path] = tf })
	w.mu.Unlock()
	if _, err := w.repo.PublishTargets(t.Context(), connect.NewRequest(&repositoryv1.PublishTargetsRequest{Role: md.Role, Metadata: md.Data})); err != nil {
		t.Fatalf("PublishTargets %s: %v", path, err)
	}
	return path, patch.Bytes()
}

// pointRelease returns a copy of base with a few small edits, as a point
// release changes a firmware image.
func pointRelease(base []byte) []byte {
	next := bytes.Clone(base)
	for _, at := range []int{len(next) / 5, len(next) / 2, len(next) - 3000} {
		rand.Read(next[at : at+700])
	}
	return append(next, []byte("build 2\n")...)
}

// events returns a device's history, oldest first.
func (w *world) events(t *testing.T, d *device) []*fleetv1.DeviceEvent {
	t.Helper()
	r, err := w.fleet.ListDeviceEvents(t.Context(), connect.NewRequest(&fleetv1.ListDeviceEventsRequest{DeviceId: d.id, PageSize: 200}))
	if err != nil {
		t.Fatalf("ListDeviceEvents: %v", err)
	}
	ev := r.Msg.GetEvents()
	for i, j := 0, len(ev)-1; i < j; i, j = i+1, j-1 {
		ev[i], ev[j] = ev[j], ev[i]
	}
	return ev
}

// TestDeltaUpdate publishes two versions of a bundle and a signed patch
// between them, then updates real devices (the agent, its A/B installer on
// disk, over mutual TLS to a real ferryd): one on the base downloads only
// the patch; one on another version downloads the full bundle; one meets
// a patch whose stored bytes were tampered with, refuses it through TUF's
// hashes and falls back to the full bundle; one whose installed base was
// modified falls back before downloading the patch. Every job succeeds
// with the new bundle; the history and the fleet view say which way it
// went and how many bytes it took.
func TestDeltaUpdate(t *testing.T) {
	w := newWorld(t)
	v1data := make([]byte, 256<<10)
	rand.Read(v1data)
	v2data := pointRelease(v1data)
	v1 := w.addData(t, "gateway/1.0.0/fw.bin", v1data)
	v2 := w.addData(t, "gateway/1.1.0/fw.bin", v2data)
	other := w.add(t, "gateway/0.9.0/fw.bin", 64<<10)
	_, patch := w.addPatch(t, v1, v1data, v2, v2data)
	full := uint64(len(v2data))
	t.Logf("bundle %d bytes, patch %d bytes (%.1f%%)", full, len(patch), 100*float64(len(patch))/float64(full))
	if uint64(len(patch)) >= full/4 {
		t.Fatalf("the patch is %d bytes of %d: a point release should patch small", len(patch), full)
	}

	tests := []struct {
		name string
		from *devicev1.Bundle
		// prepare runs with the device on from, before it is given v2.
		prepare    func(t *testing.T, d *device)
		wantMethod devicev1.DownloadMethod
		wantBytes  uint64
		// wantFallback is a substring of the delta.fallback notice; empty:
		// none.
		wantFallback string
	}{
		{name: "on the base: patch", from: v1, wantMethod: devicev1.DownloadMethod_DOWNLOAD_METHOD_DELTA, wantBytes: uint64(len(patch))},
		{name: "on another version: full", from: other, wantMethod: devicev1.DownloadMethod_DOWNLOAD_METHOD_FULL, wantBytes: full},
		{
			name: "base modified on the device: fallback", from: v1,
			prepare: func(t *testing.T, d *device) {
				conf, err := d.ab().Confirmed()
				if err != nil {
					t.Fatal(err)
				}
				p := filepath.Join(d.ab().Dir, conf, "bundle")
				b, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				b[1000] ^= 0xff
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantMethod: devicev1.DownloadMethod_DOWNLOAD_METHOD_FULL, wantBytes: full, wantFallback: "modified",
		},
		{
			name: "tampered patch: refused, fallback", from: v1,
			prepare: func(t *testing.T, d *device) {
				blob := filepath.Join(w.f.Config().DataDir, "repository", tuf.BlobKey(tuftest.SHA256(patch)))
				b, err := os.ReadFile(blob)
				if err != nil {
					t.Fatalf("the patch's stored blob: %v", err)
				}
				b[len(b)/2] ^= 0xff
				if err := os.WriteFile(blob, b, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			wantMethod: devicev1.DownloadMethod_DOWNLOAD_METHOD_FULL, wantBytes: uint64(len(patch)) + full, wantFallback: "refused",
		},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := w.newDevice(t, "delta-"+string(rune('a'+i)))
			stop := w.background(t, d, nil)
			w.waitSettled(t, d, w.setDesired(t, d, tc.from, nil))
			stop()
			if tc.prepare != nil {
				tc.prepare(t, d)
			}
			stop = w.background(t, d, nil)
			dev := w.waitSettled(t, d, w.setDesired(t, d, v2, nil))
			stop()

			job := dev.GetJob()
			if job.GetStatus() != devicev1.JobStatus_JOB_STATUS_SUCCEEDED {
				t.Fatalf("job %s %s %s: %s", job.GetStatus(), job.GetStep(), job.GetErrorCode(), job.GetMessage())
			}
			if sha, committed := d.booted(); sha != v2.GetSha256() || !committed {
				t.Errorf("the device boots %s (committed %v), want v2 %s", shortSHA(sha), committed, shortSHA(v2.GetSha256()))
			}
			if job.GetDownloadMethod() != tc.wantMethod || job.GetBytesDownloaded() != tc.wantBytes {
				t.Errorf("fleet view: %s, %d bytes; want %s, %d bytes", job.GetDownloadMethod(), job.GetBytesDownloaded(), tc.wantMethod, tc.wantBytes)
			}
			var fallbacks []*fleetv1.DeviceEvent
			for _, ev := range w.events(t, d) {
				if ev.GetJobId() == job.GetId() && ev.GetErrorCode() == agent.CodeDeltaFallback {
					fallbacks = append(fallbacks, ev)
				}
			}
			switch {
			case tc.wantFallback == "" && len(fallbacks) > 0:
				t.Errorf("history has %s: %s", agent.CodeDeltaFallback, fallbacks[0].GetMessage())
			case tc.wantFallback != "" && len(fallbacks) != 1:
				t.Errorf("history has %d %s events, want 1", len(fallbacks), agent.CodeDeltaFallback)
			case tc.wantFallback != "" && !strings.Contains(fallbacks[0].GetMessage(), tc.wantFallback):
				t.Errorf("%s message %q does not say %q", agent.CodeDeltaFallback, fallbacks[0].GetMessage(), tc.wantFallback)
			case tc.wantFallback != "":
				if ev := fallbacks[0]; ev.GetStatus() != devicev1.JobStatus_JOB_STATUS_IN_PROGRESS || ev.GetStep() != devicev1.Step_STEP_DOWNLOADING {
					t.Errorf("%s event is %s/%s, want IN_PROGRESS/DOWNLOADING", agent.CodeDeltaFallback, ev.GetStatus(), ev.GetStep())
				}
				t.Logf("%s: %s", agent.CodeDeltaFallback, fallbacks[0].GetMessage())
			}
			if left := dirEntries(t, d.downloads()); len(left) > 0 {
				t.Errorf("downloads left behind: %v", left)
			}
			if signed := w.signed(t, dev); signed.Bundle == nil || signed.Bundle.SHA256 != v2.GetSha256() {
				t.Errorf("the device signed that it runs %v, want v2", signed.Bundle)
			}
		})
	}
}
