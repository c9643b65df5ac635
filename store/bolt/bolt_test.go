package bolt_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
	"github.com/ferryhq/ferry/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Devices {
		s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
		if err != nil {
			t.Fatal(err)
		}
		s.SetClock(testclock.Now)
		return s
	})
}

func TestCredentialsConformance(t *testing.T) {
	storetest.RunCredentials(t, func(t *testing.T) store.Credentials {
		s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
		if err != nil {
			t.Fatal(err)
		}
		s.SetClock(testclock.Now)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestRolloutsConformance(t *testing.T) {
	storetest.RunRollouts(t, func(t *testing.T) storetest.RolloutStore {
		s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
		if err != nil {
			t.Fatal(err)
		}
		s.SetClock(testclock.Now)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestLeaseTokensSurviveReopen checks that a lease's tokens keep growing
// across a restart, after the lease was released.
func TestLeaseTokensSurviveReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ferry.db")
	s, err := bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.AcquireLease(ctx, store.RolloutLease, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLease(ctx, store.RolloutLease, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	next, err := s.AcquireLease(ctx, store.RolloutLease, "a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if next <= first {
		t.Errorf("token after reopen %d, want more than %d", next, first)
	}
}

// TestDurable checks that what one process wrote is there after a reopen.
func TestDurable(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ferry.db")
	s, err := bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.CreateDevice(ctx, store.Device{ID: "dev-1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetDesired(ctx, "dev-1", 0, store.Desired{Version: 1, JobID: "j1"}, store.Write{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := s.GetDevice(ctx, "dev-1")
	if err != nil {
		t.Fatal(err)
	}
	if d.Desired.Version != 1 || d.Desired.JobID != "j1" {
		t.Errorf("after reopen: %+v", d.Desired)
	}
}

// TestLocked checks that a second process cannot open a file in use.
func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ferry.db")
	s, err := bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := bolt.Open(path); err == nil {
		s2.Close()
		t.Fatal("opened a database file that is in use")
	}
}

func BenchmarkStore(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) store.Devices {
		s, err := bolt.Open(filepath.Join(b.TempDir(), "ferry.db"))
		if err != nil {
			b.Fatal(err)
		}
		return s
	})
}

func TestAuditConformance(t *testing.T) {
	storetest.RunAudit(t, func(t *testing.T) store.Audit {
		s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
