package tuf_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// mutexLock is tuf.Locker for instances in one process: what the store's
// lease is for instances in several.
type mutexLock struct{ mu sync.Mutex }

func (l *mutexLock) Lock(ctx context.Context) (func(), error) {
	l.mu.Lock()
	return l.mu.Unlock, nil
}

// peers are two repositories on one storage with the same online keys, as
// two ferryd instances sharing a bucket, and the release engineer.
type peers struct {
	a, b    *tuf.Repository
	storage *tuf.BucketStorage
	keys    tuf.OnlineKeys
	rel     *tuftest.Release
}

func newPeers(t *testing.T, bins int) *peers {
	t.Helper()
	ctx := context.Background()
	storage, err := tuf.OpenStorage(ctx, filepath.Join(t.TempDir(), "repository"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { storage.Close() })
	keys, err := tuf.EnsureOnlineKeys(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	lock := &mutexLock{}
	p := &peers{storage: storage, keys: keys}
	for _, r := range []**tuf.Repository{&p.a, &p.b} {
		if *r, err = tuf.Open(ctx, tuf.Config{Storage: storage, Keys: keys, Lock: lock}); err != nil {
			t.Fatal(err)
		}
	}
	p.rel = tuftest.New(t, p.a.OnlineKeys(), tuftest.Options{BinBits: bins})
	if _, err := p.a.PublishRoot(ctx, p.rel.RootJSON()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.a.PublishTargets(ctx, p.rel.Init()); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *peers) upload(t *testing.T, r *tuf.Repository, data []byte) {
	t.Helper()
	if err := r.UploadBlob(context.Background(), int64(len(data)), tuftest.SHA256(data), bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
}

func servedTimestamp(t *testing.T, r *tuf.Repository) []byte {
	t.Helper()
	o, err := r.OpenMetadata(context.Background(), "timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	raw, err := io.ReadAll(o)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestViewFollowsPeer: what A publishes, B serves after one check, whole;
// a check with nothing new changes nothing.
func TestViewFollowsPeer(t *testing.T) {
	ctx := context.Background()
	p := newPeers(t, 2)
	if _, err := p.b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	before := p.b.Versions()
	data := []byte("published on A")
	p.upload(t, p.a, data)
	if _, err := p.a.PublishTargets(ctx, []tuf.SignedMetadata{p.rel.Add("peer/fw.bin", data)}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.b.Bundle("peer/fw.bin"); err == nil || p.b.Versions() != before {
		t.Fatal("B changed its view before any check")
	}
	changed, err := p.b.Refresh(ctx)
	if err != nil || !changed {
		t.Fatalf("Refresh on B: %v, %v; want a change", changed, err)
	}
	if p.b.Versions() != p.a.Versions() {
		t.Fatalf("B serves %+v, A %+v", p.b.Versions(), p.a.Versions())
	}
	if !bytes.Equal(servedTimestamp(t, p.b), servedTimestamp(t, p.a)) {
		t.Fatal("B serves another timestamp than A")
	}
	o, err := p.b.OpenTarget(ctx, "peer/fw.bin", tuftest.SHA256(data))
	if err != nil {
		t.Fatalf("OpenTarget on B: %v", err)
	}
	o.Close()
	if changed, err := p.b.Refresh(ctx); err != nil || changed {
		t.Fatalf("second Refresh on B: %v, %v; want no change", changed, err)
	}
}

// TestViewRefusesTornState: a stored timestamp whose snapshot is missing,
// or is not the one it names, or that is not signed by the timestamp key
// the root names, is not served: the instance keeps serving the whole view
// it had, and says why.
func TestViewRefusesTornState(t *testing.T) {
	tests := []struct {
		name string
		// tamper writes to the storage behind both instances.
		tamper func(t *testing.T, p *peers, ts *metadata.Metadata[metadata.TimestampType])
		want   string
	}{
		{"timestamp names a snapshot that is not stored", func(t *testing.T, p *peers, ts *metadata.Metadata[metadata.TimestampType]) {
			ts.Signed.Meta["snapshot.json"].Version += 5
			writeTimestamp(t, p, ts, p.keys.Timestamp)
		}, "read snapshot"},
		{"stored snapshot is not the one named", func(t *testing.T, p *peers, ts *metadata.Metadata[metadata.TimestampType]) {
			v := ts.Signed.Meta["snapshot.json"].Version
			older, err := p.storage.ReadAll(context.Background(), fmt.Sprintf("metadata/%d.snapshot.json", v-1))
			if err != nil {
				t.Fatal(err)
			}
			ts.Signed.Version++
			writeTimestamp(t, p, ts, p.keys.Timestamp)
			if err := p.storage.WriteAll(context.Background(), fmt.Sprintf("metadata/%d.snapshot.json", v), older); err != nil {
				t.Fatal(err)
			}
		}, "is not the one timestamp version"},
		{"timestamp signed by another key", func(t *testing.T, p *peers, ts *metadata.Metadata[metadata.TimestampType]) {
			ts.Signed.Version++
			writeTimestamp(t, p, ts, tuftest.Signers(t, 1)[0])
		}, "stored timestamp version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			p := newPeers(t, 0)
			data := []byte("good")
			p.upload(t, p.a, data)
			if _, err := p.a.PublishTargets(ctx, []tuf.SignedMetadata{p.rel.Add("good/fw.bin", data)}); err != nil {
				t.Fatal(err)
			}
			if _, err := p.b.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			served, versions := servedTimestamp(t, p.b), p.b.Versions()
			raw, err := p.storage.ReadAll(ctx, "metadata/timestamp.json")
			if err != nil {
				t.Fatal(err)
			}
			ts, err := metadata.Timestamp().FromBytes(raw)
			if err != nil {
				t.Fatal(err)
			}
			tt.tamper(t, p, ts)
			changed, err := p.b.Refresh(ctx)
			if err == nil || changed || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
				t.Fatalf("Refresh: %v, %v; want an error about %q", changed, err, tt.want)
			}
			if !bytes.Equal(servedTimestamp(t, p.b), served) || p.b.Versions() != versions {
				t.Fatal("B serves another view after a refused one")
			}
			if _, err := p.b.Bundle("good/fw.bin"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func writeTimestamp(t *testing.T, p *peers, ts *metadata.Metadata[metadata.TimestampType], signer signature.Signer) {
	t.Helper()
	ts.Signatures = nil
	if err := tuf.Sign(ts, signer); err != nil {
		t.Fatal(err)
	}
	if err := p.storage.WriteAll(context.Background(), "metadata/timestamp.json", tuftest.Bytes(t, ts)); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentPublishOnPeers: two instances publish different hash bins
// at the same moment, many times; with the shared lock no publish is lost,
// and each instance's view only moves forward meanwhile.
func TestConcurrentPublishOnPeers(t *testing.T) {
	ctx := context.Background()
	p := newPeers(t, 4)
	const rounds = 20
	var paths []string
	stop := make(chan struct{})
	var watchers sync.WaitGroup
	for _, r := range []*tuf.Repository{p.a, p.b} {
		watchers.Go(func() {
			var last int64
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := r.Refresh(ctx); err != nil {
					t.Error(err)
					return
				}
				v := r.Versions().Timestamp
				if v < last {
					t.Errorf("timestamp went back from %d to %d", last, v)
					return
				}
				last = v
			}
		})
	}
	for round := range rounds {
		var mds [2]tuf.SignedMetadata
		var pair [2]string
		for i := range pair {
			for n := 0; ; n++ {
				path := fmt.Sprintf("race/%d-%d-%d/fw.bin", round, i, n)
				if i == 0 || tuf.RoleFor(p.rel.Top, path) != tuf.RoleFor(p.rel.Top, pair[0]) {
					pair[i] = path
					break
				}
			}
			data := []byte(pair[i])
			p.upload(t, p.a, data)
			mds[i] = p.rel.Add(pair[i], data)
		}
		var wg sync.WaitGroup
		var errs [2]error
		for i, r := range []*tuf.Repository{p.a, p.b} {
			wg.Go(func() { _, errs[i] = r.PublishTargets(ctx, []tuf.SignedMetadata{mds[i]}) })
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, publish %s: %v", round, pair[i], err)
			}
		}
		paths = append(paths, pair[:]...)
	}
	close(stop)
	watchers.Wait()
	for _, r := range []*tuf.Repository{p.a, p.b} {
		if _, err := r.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		for _, path := range paths {
			if _, err := r.Bundle(path); err != nil {
				t.Fatalf("after concurrent publishes: %v", err)
			}
		}
	}
}
