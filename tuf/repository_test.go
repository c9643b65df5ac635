package tuf_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/ferryhq/ferry/tuf"
	"github.com/ferryhq/ferry/tuf/tuftest"
)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type env struct {
	repo    *tuf.Repository
	storage *tuf.BucketStorage
	dir     string
	rel     *tuftest.Release
	clock   *clock
}

// newEnv opens a repository in a temporary directory, publishes a root and
// the first targets (with 2^bins hash bins).
func newEnv(tb testing.TB, bins int) *env {
	tb.Helper()
	ctx := context.Background()
	dir := filepath.Join(tb.TempDir(), "repository")
	storage, err := tuf.OpenStorage(ctx, dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { storage.Close() })
	keys, err := tuf.EnsureOnlineKeys(filepath.Join(tb.TempDir(), "keys"))
	if err != nil {
		tb.Fatal(err)
	}
	c := &clock{now: time.Now()}
	repo, err := tuf.Open(ctx, tuf.Config{Storage: storage, Keys: keys, Now: c.Now})
	if err != nil {
		tb.Fatal(err)
	}
	rel := tuftest.New(tb, repo.OnlineKeys(), tuftest.Options{BinBits: bins, Now: c.Now})
	if _, err := repo.PublishRoot(ctx, rel.RootJSON()); err != nil {
		tb.Fatal(err)
	}
	if _, err := repo.PublishTargets(ctx, rel.Init()); err != nil {
		tb.Fatal(err)
	}
	return &env{repo: repo, storage: storage, dir: dir, rel: rel, clock: c}
}

// publish uploads data and publishes it at path.
func (e *env) publish(tb testing.TB, path string, data []byte) {
	tb.Helper()
	ctx := context.Background()
	if err := e.repo.UploadBlob(ctx, int64(len(data)), tuftest.SHA256(data), bytes.NewReader(data)); err != nil {
		tb.Fatal(err)
	}
	if _, err := e.repo.PublishTargets(ctx, []tuf.SignedMetadata{e.rel.Add(path, data)}); err != nil {
		tb.Fatal(err)
	}
}

// repoFetcher is a TUF fetcher that reads straight from a Repository
// ("repo:///metadata/<name>", "repo:///targets/<name>"), counting bytes.
type repoFetcher struct {
	repo  *tuf.Repository
	bytes atomic.Int64
	// meter, when set, is paused while the repository serves a file, so
	// that it counts the client's CPU only.
	meter *cpuMeter
}

func (f *repoFetcher) DownloadFile(rawURL string, maxLength int64, _ time.Duration) ([]byte, error) {
	if f.meter != nil {
		// Serving is the server's work, not the client's.
		f.meter.pause()
		defer f.meter.resume()
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	var obj tuf.Object
	if name, ok := strings.CutPrefix(u.Path, "/metadata/"); ok {
		obj, err = f.repo.OpenMetadata(context.Background(), name)
	} else if name, ok := strings.CutPrefix(u.Path, "/targets/"); ok {
		path, digest, perr := tuf.ParseHashedTargetName(name)
		if perr != nil {
			return nil, &metadata.ErrDownloadHTTP{StatusCode: 404, URL: rawURL}
		}
		obj, err = f.repo.OpenTarget(context.Background(), path, digest)
	}
	if obj == nil {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: 404, URL: rawURL}
	}
	defer obj.Close()
	data, err := io.ReadAll(io.LimitReader(obj, maxLength+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{Msg: "too long"}
	}
	f.bytes.Add(int64(len(data)))
	return data, nil
}

// client returns a go-tuf updater over the repository, caching metadata in
// a directory of its own.
func (e *env) client(tb testing.TB, f *repoFetcher) *updater.Updater {
	tb.Helper()
	cfg, err := config.New("repo:///metadata", e.rel.RootJSON())
	if err != nil {
		tb.Fatal(err)
	}
	cfg.RemoteTargetsURL = "repo:///targets"
	cfg.LocalMetadataDir = tb.TempDir()
	cfg.LocalTargetsDir = tb.TempDir()
	cfg.Fetcher = f
	u, err := updater.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	u.UnsafeSetRefTime(e.clock.Now())
	return u
}

func TestPublishAndVerify(t *testing.T) {
	for _, bins := range []int{0, 4} {
		t.Run(fmt.Sprintf("bin_bits=%d", bins), func(t *testing.T) {
			e := newEnv(t, bins)
			data := []byte("firmware 1.0")
			e.publish(t, "camera/1.0/fw.bin", data)
			u := e.client(t, &repoFetcher{repo: e.repo})
			if err := u.Refresh(); err != nil {
				t.Fatal(err)
			}
			tf, err := u.GetTargetInfo("camera/1.0/fw.bin")
			if err != nil {
				t.Fatal(err)
			}
			_, got, err := u.DownloadTarget(tf, "", "")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, data) {
				t.Fatalf("downloaded %q, want %q", got, data)
			}
			b, err := e.repo.Bundle("camera/1.0/fw.bin")
			if err != nil || b.Info.Name != "test" || b.Length != int64(len(data)) {
				t.Fatalf("Bundle = %+v, %v", b, err)
			}
		})
	}
}

func TestRefreshExpiring(t *testing.T) {
	tests := []struct {
		name                    string
		advance                 time.Duration
		resigned                bool
		snapshotUp, timestampUp int64
	}{
		{"fresh", time.Hour, false, 0, 0},
		{"timestamp past half its life", 13 * time.Hour, true, 0, 1},
		{"snapshot past half its life", 4 * 24 * time.Hour, true, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 0)
			before := e.repo.Versions()
			e.clock.Add(tt.advance)
			resigned, err := e.repo.RefreshExpiring(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			after := e.repo.Versions()
			if resigned != tt.resigned || after.Snapshot-before.Snapshot != tt.snapshotUp || after.Timestamp-before.Timestamp != tt.timestampUp {
				t.Fatalf("resigned=%v, versions %+v -> %+v; want resigned=%v, snapshot +%d, timestamp +%d",
					resigned, before, after, tt.resigned, tt.snapshotUp, tt.timestampUp)
			}
			// A client at the new time accepts what was re-signed.
			u := e.client(t, &repoFetcher{repo: e.repo})
			if err := u.Refresh(); err != nil {
				t.Fatalf("client refresh after re-signing: %v", err)
			}
		})
	}
}

func TestUploadBlobRefusesMismatch(t *testing.T) {
	data := []byte("bundle bytes")
	tests := []struct {
		name   string
		length int64
		sha    string
		body   []byte
	}{
		{"short", int64(len(data)) + 1, tuftest.SHA256(data), data},
		{"long", int64(len(data)) - 1, tuftest.SHA256(data), data},
		{"wrong hash", int64(len(data)), tuftest.SHA256([]byte("other")), data},
		{"malformed hash", int64(len(data)), "xyz", data},
		{"negative length", -1, tuftest.SHA256(data), data},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 0)
			err := e.repo.UploadBlob(context.Background(), tt.length, tt.sha, bytes.NewReader(tt.body))
			if tuf.KindOf(err) != tuf.KindInvalid {
				t.Fatalf("UploadBlob = %v, want an invalid-input error", err)
			}
			if tuf.ValidSHA256(tt.sha) {
				if _, err := e.storage.Size(context.Background(), tuf.BlobKey(tt.sha)); !errors.Is(err, tuf.ErrNotExist) {
					t.Fatalf("blob stored after a refused upload: %v", err)
				}
			}
		})
	}
}

func TestTargetNames(t *testing.T) {
	sha := tuftest.SHA256([]byte("x"))
	tests := []struct {
		path string
		ok   bool
	}{
		{"fw.bin", true},
		{"camera/1.0/fw.bin", true},
		{"camera/1.0+build.7/fw_v2-rc.1.bin", true},
		{"", false},
		{"/etc/passwd", false},
		{"../secret", false},
		{"camera/../../x", false},
		{"camera//x", false},
		{"camera/./x", false},
		{".hidden", false},
		{"trailing/", false},
		{`back\slash`, false},
		{"spa ce", false},
		{strings.Repeat("a", 256), false},
	}
	for _, tt := range tests {
		err := tuf.ValidTargetPath(tt.path)
		if (err == nil) != tt.ok {
			t.Errorf("ValidTargetPath(%q) = %v, want ok=%v", tt.path, err, tt.ok)
			continue
		}
		if !tt.ok {
			continue
		}
		p, d, err := tuf.ParseHashedTargetName(tuf.HashedTargetName(tt.path, sha))
		if err != nil || p != tt.path || d != sha {
			t.Errorf("round trip of %q = %q, %q, %v", tt.path, p, d, err)
		}
	}
}

func FuzzParseHashedTargetName(f *testing.F) {
	sha := tuftest.SHA256([]byte("x"))
	for _, s := range []string{sha + ".fw.bin", "a/b/" + sha + ".c", "../" + sha + ".x", sha, "x.y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		path, digest, err := tuf.ParseHashedTargetName(name)
		if err != nil {
			return
		}
		if tuf.ValidTargetPath(path) != nil || !tuf.ValidSHA256(digest) {
			t.Fatalf("accepted %q as %q, %q", name, path, digest)
		}
		if strings.Contains(path, "..") && strings.Contains(path, "/../") {
			t.Fatalf("path traversal accepted: %q", path)
		}
	})
}

// FuzzPublish feeds arbitrary metadata to both publish calls: each is
// refused as bad input or unmet precondition, and nothing changes.
func FuzzPublish(f *testing.F) {
	e := newEnv(f, 2)
	seed := e.rel.Add("a/b", []byte("x"))
	f.Add("targets", seed.Data)
	f.Add(seed.Role, seed.Data)
	f.Add("targets", []byte(`{"signed":{"_type":"targets","version":99,"expires":"2100-01-01T00:00:00Z","targets":{}},"signatures":[]}`))
	f.Add("root", e.rel.RootJSON())
	before := e.repo.Versions()
	f.Fuzz(func(t *testing.T, role string, data []byte) {
		ctx := context.Background()
		_, err := e.repo.PublishTargets(ctx, []tuf.SignedMetadata{{Role: role, Data: data}})
		if k := tuf.KindOf(err); k != tuf.KindInvalid && k != tuf.KindFailedPrecondition {
			t.Fatalf("PublishTargets(%q) = %v", role, err)
		}
		_, err = e.repo.PublishRoot(ctx, data)
		if k := tuf.KindOf(err); k != tuf.KindInvalid && k != tuf.KindFailedPrecondition {
			t.Fatalf("PublishRoot = %v", err)
		}
		if got := e.repo.Versions(); got != before {
			t.Fatalf("versions changed: %+v -> %+v", before, got)
		}
	})
}
