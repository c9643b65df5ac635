package tuf_test

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/delta"
	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// upload stores data as a blob and returns its target file at path.
func (e *env) upload(tb testing.TB, path string, data []byte, version string) *metadata.TargetFiles {
	tb.Helper()
	if err := e.repo.UploadBlob(context.Background(), int64(len(data)), tuftest.SHA256(data), bytes.NewReader(data)); err != nil {
		tb.Fatal(err)
	}
	tf, err := tuf.NewTargetFile(path, int64(len(data)), tuftest.SHA256(data), tuf.BundleInfo{Name: "fw", Version: version, Published: time.Now().UTC().Truncate(time.Second)})
	if err != nil {
		tb.Fatal(err)
	}
	return tf
}

func ref(path string, data []byte) tuf.DeltaRef {
	return tuf.DeltaRef{Path: path, SHA256: tuftest.SHA256(data), Length: int64(len(data))}
}

func TestPublishDelta(t *testing.T) {
	v1, v2, v3 := []byte("firmware one"), []byte("firmware two"), []byte("firmware three")
	patchBytes := []byte("not really a patch, but a blob")
	const p1, p2, p3 = "fw/1.0.0/fw.img", "fw/2.0.0/fw.img", "fw/3.0.0/fw.img"
	good := tuf.DeltaInfo{Base: ref(p1, v1), Result: ref(p2, v2), Format: delta.Format, Window: delta.DefaultWindow}
	tests := []struct {
		name   string
		change func(d *tuf.DeltaInfo)
		// withResult publishes the result in the same batch.
		withResult bool
		path       string // patch path if not the one DeltaPath gives
		wantKind   tuf.Kind
	}{
		{"result in the same batch", nil, true, "", 0},
		{"result published before", nil, false, "", 0},
		{"result not published", func(d *tuf.DeltaInfo) { d.Result = ref(p3, v3) }, false, "", tuf.KindFailedPrecondition},
		{"base not published", func(d *tuf.DeltaInfo) { d.Base = ref("fw/0.9.0/fw.img", v1) }, true, "", tuf.KindFailedPrecondition},
		{"base with another sha256", func(d *tuf.DeltaInfo) { d.Base = ref(p1, v3) }, true, "", tuf.KindFailedPrecondition},
		{"base with another length", func(d *tuf.DeltaInfo) { d.Base.Length++ }, true, "", tuf.KindFailedPrecondition},
		{"result with another sha256", func(d *tuf.DeltaInfo) { d.Result.SHA256 = tuftest.SHA256(v3) }, true, "", tuf.KindFailedPrecondition},
		{"unknown format", func(d *tuf.DeltaInfo) { d.Format = "bsdiff" }, true, "", tuf.KindInvalid},
		{"window not a power of two", func(d *tuf.DeltaInfo) { d.Window = 3 << 20 }, true, "", tuf.KindInvalid},
		{"base is the result", func(d *tuf.DeltaInfo) { d.Base = d.Result }, true, "", tuf.KindInvalid},
		{"bad sha256", func(d *tuf.DeltaInfo) { d.Base.SHA256 = "XYZ" }, true, "fw/2.0.0/fw.img.delta-XYZ", tuf.KindInvalid},
		{"wrong path", nil, true, "fw/2.0.0/fw.img.delta-0000000000000000", tuf.KindInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 1)
			ctx := context.Background()
			if _, err := e.repo.PublishTargets(ctx, e.rel.Put(e.upload(t, p1, v1, "1.0.0"))); err != nil {
				t.Fatal(err)
			}
			result := e.upload(t, p2, v2, "2.0.0")
			if !tc.withResult {
				if _, err := e.repo.PublishTargets(ctx, e.rel.Put(result)); err != nil {
					t.Fatal(err)
				}
			}
			d := good
			if tc.change != nil {
				tc.change(&d)
			}
			path := tuf.DeltaPath(d.Result.Path, d.Base.SHA256)
			if tc.path != "" {
				path = tc.path
			}
			// Built by hand, as a publisher that skips NewDeltaTargetFile's
			// checks would.
			patch := e.upload(t, path, patchBytes, "2.0.0")
			raw := json.RawMessage(mustJSON(t, map[string]any{
				"ferry": tuf.BundleInfo{Name: "fw", Version: "2.0.0", Published: e.clock.Now().UTC().Truncate(time.Second)},
				"delta": d,
			}))
			patch.Custom = &raw
			tfs := []*metadata.TargetFiles{patch}
			if tc.withResult {
				tfs = append(tfs, result)
			}
			_, err := e.repo.PublishTargets(ctx, e.rel.Put(tfs...))
			if tc.wantKind != 0 {
				if tuf.KindOf(err) != tc.wantKind {
					t.Fatalf("PublishTargets = %v (kind %d), want kind %d", err, tuf.KindOf(err), tc.wantKind)
				}
				if _, err := e.repo.Bundle(path); err == nil {
					t.Fatalf("refused patch %q is published", path)
				}
				return
			}
			if err != nil {
				t.Fatalf("PublishTargets: %v", err)
			}
			b, err := e.repo.Bundle(path)
			if err != nil {
				t.Fatal(err)
			}
			if b.Delta == nil || *b.Delta != d {
				t.Fatalf("published patch has delta %+v, want %+v", b.Delta, d)
			}
			if full, err := e.repo.Bundle(p2); err != nil || full.Delta != nil {
				t.Fatalf("result target: %+v, %v; want a published full bundle", full, err)
			}
		})
	}
}

func TestNewDeltaTargetFile(t *testing.T) {
	d := tuf.DeltaInfo{Base: ref("a/1.0.0/x", []byte("1")), Result: ref("a/2.0.0/x", []byte("2")), Format: delta.Format, Window: 1 << 20}
	tf, err := tuf.NewDeltaTargetFile(10, tuftest.SHA256([]byte("p")), tuf.BundleInfo{Name: "a", Version: "2.0.0"}, d)
	if err != nil {
		t.Fatal(err)
	}
	if want := "a/2.0.0/x.delta-" + d.Base.SHA256[:16]; tf.Path != want {
		t.Fatalf("path %q, want %q", tf.Path, want)
	}
	got, ok, err := tuf.ParseDelta(tf.Custom)
	if err != nil || !ok || got != d {
		t.Fatalf("ParseDelta = %+v, %v, %v; want %+v", got, ok, err, d)
	}
	d.Window = 12345
	if _, err := tuf.NewDeltaTargetFile(10, tuftest.SHA256([]byte("p")), tuf.BundleInfo{Name: "a", Version: "2.0.0"}, d); tuf.KindOf(err) != tuf.KindInvalid {
		t.Fatalf("bad window: %v, want an invalid-argument error", err)
	}
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
