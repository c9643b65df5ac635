package tuf_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// benchBinBits is the hash-bin delegation of the benchmark repositories:
// 512 bins, so a 100,000-target repository has about 200 targets a bin
// (fewer bins make each bin costly, more make the snapshot costly; see
// docs/benchmarks.md).
const benchBinBits = 9

var benchSizes = []int{1_000, 10_000, 100_000}

// populate publishes n targets (all naming one small blob) into e's hash
// bins in one batch.
func populate(b *testing.B, e *env, n int) {
	b.Helper()
	blob := []byte("benchmark bundle")
	sum := tuftest.SHA256(blob)
	if err := e.repo.UploadBlob(context.Background(), int64(len(blob)), sum, bytes.NewReader(blob)); err != nil {
		b.Fatal(err)
	}
	touched := map[string]bool{}
	info := tuf.BundleInfo{Name: "product", Version: "1", Hardware: []string{"board-a"}, Published: time.Now().UTC().Truncate(time.Second)}
	for i := range n {
		path := fmt.Sprintf("product-%d/%d.0.0/firmware.bin", i%50, i)
		tf, err := tuf.NewTargetFile(path, int64(len(blob)), sum, info)
		if err != nil {
			b.Fatal(err)
		}
		role := tuf.RoleFor(e.rel.Top, path)
		e.rel.Role(role).Signed.Targets[path] = tf
		touched[role] = true
	}
	var batch []tuf.SignedMetadata
	for role := range touched {
		batch = append(batch, e.rel.Bump(role))
	}
	if _, err := e.repo.PublishTargets(context.Background(), batch); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPublish measures ferryd's time to publish one new bundle (one
// signed hash bin) into a repository of n targets: verify, check the blob,
// store, sign snapshot and timestamp. Signing the bin is the release
// engineer's work and is not timed.
func BenchmarkPublish(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("targets=%d", n), func(b *testing.B) {
			e := newEnv(b, benchBinBits)
			populate(b, e, n)
			blob := []byte("new bundle")
			if err := e.repo.UploadBlob(context.Background(), int64(len(blob)), tuftest.SHA256(blob), bytes.NewReader(blob)); err != nil {
				b.Fatal(err)
			}
			var binBytes int
			cpu := startCPU()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				cpu.pause()
				signed := e.rel.Add(fmt.Sprintf("new/%d/firmware.bin", i), blob)
				binBytes = len(signed.Data)
				cpu.resume()
				b.StartTimer()
				if _, err := e.repo.PublishTargets(context.Background(), []tuf.SignedMetadata{signed}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(cpu.perOp(b.N), "cpu-ms/op")
			b.ReportMetric(float64(binBytes), "bin-bytes")
		})
	}
}

// BenchmarkClientRefresh measures go-tuf's updater on a device that is up
// to date with a repository of n targets when one bundle is published: a
// new updater from the cached metadata, Refresh, and the lookup of the new
// bundle (which fetches its hash bin). Publishing is not timed.
//
// The repository (100,000 targets in memory) shares the process, and a
// device's collector never scans it: so garbage is collected between
// iterations and the collector is off while the client runs. The client's
// own allocation is in the figures; a device's collector would also run,
// over a heap of a few megabytes.
func BenchmarkClientRefresh(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("targets=%d", n), func(b *testing.B) {
			e := newEnv(b, benchBinBits)
			populate(b, e, n)
			f := &repoFetcher{repo: e.repo}
			cacheDir := b.TempDir()
			if err := openBenchClient(b, e, f, cacheDir).Refresh(); err != nil {
				b.Fatal(err)
			}
			blob := []byte("new bundle")
			if err := e.repo.UploadBlob(context.Background(), int64(len(blob)), tuftest.SHA256(blob), bytes.NewReader(blob)); err != nil {
				b.Fatal(err)
			}
			f.bytes.Store(0)
			defer debug.SetGCPercent(debug.SetGCPercent(-1))
			b.ReportAllocs()
			cpu := startCPU()
			f.meter = cpu
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				cpu.pause()
				path := fmt.Sprintf("new/%d/firmware.bin", i)
				if _, err := e.repo.PublishTargets(context.Background(), []tuf.SignedMetadata{e.rel.Add(path, blob)}); err != nil {
					b.Fatal(err)
				}
				runtime.GC()
				cpu.resume()
				b.StartTimer()
				u := openBenchClient(b, e, f, cacheDir)
				if err := u.Refresh(); err != nil {
					b.Fatal(err)
				}
				if _, err := u.GetTargetInfo(path); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(cpu.perOp(b.N), "cpu-ms/op")
			b.ReportMetric(float64(f.bytes.Load())/float64(b.N), "fetched-bytes/op")
		})
	}
}

// openBenchClient returns an updater that trusts what is cached in dir,
// as a device does after a restart.
func openBenchClient(b *testing.B, e *env, f *repoFetcher, dir string) *updater.Updater {
	b.Helper()
	root, err := os.ReadFile(filepath.Join(dir, "root.json"))
	if err != nil {
		root = e.rel.RootJSON()
	}
	cfg, err := config.New("repo:///metadata", root)
	if err != nil {
		b.Fatal(err)
	}
	cfg.RemoteTargetsURL = "repo:///targets"
	cfg.LocalMetadataDir = dir
	cfg.LocalTargetsDir = filepath.Join(dir, "targets")
	cfg.Fetcher = f
	u, err := updater.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return u
}
