package tuf_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryhq/ferry/tuf"
)

func TestCheckOnlineExpiry(t *testing.T) {
	// An empty repository has nothing to expire.
	storage, err := tuf.OpenStorage(context.Background(), filepath.Join(t.TempDir(), "repository"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { storage.Close() })
	keys, err := tuf.EnsureOnlineKeys(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	empty, err := tuf.Open(context.Background(), tuf.Config{Storage: storage, Keys: keys})
	if err != nil {
		t.Fatal(err)
	}
	if err := empty.CheckOnlineExpiry(); err != nil {
		t.Errorf("empty repository: %v, want nil", err)
	}

	tests := []struct {
		name    string
		advance time.Duration
		want    string // "" for fresh
	}{
		{"just published", 0, ""},
		{"timestamp at half its life", tuf.DefaultTimestampExpiry / 2, ""},
		{"timestamp just expired", tuf.DefaultTimestampExpiry + time.Second, "timestamp version 1 expired at "},
		{"both expired", tuf.DefaultSnapshotExpiry + time.Second, "timestamp version 1 expired at "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, 0)
			e.clock.Add(tt.advance)
			err := e.repo.CheckOnlineExpiry()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("CheckOnlineExpiry = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("CheckOnlineExpiry = %v, want %q…", err, tt.want)
			}
			// Re-signing makes it fresh again.
			if _, err := e.repo.RefreshExpiring(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := e.repo.CheckOnlineExpiry(); err != nil {
				t.Fatalf("after re-signing: %v", err)
			}
		})
	}
}
