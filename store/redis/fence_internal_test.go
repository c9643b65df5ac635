package redis

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferryhq/ferry/internal/testredis"
	"github.com/ferryhq/ferry/store"
)

// TestBucketFence checks the storage-side fence of executions: a write
// with an older token than one a bucket has seen is refused by the bucket
// itself, even when it got past the lease check in {rollouts} (a holder
// that checked just before losing the lease), and a new holder's
// AcquireLease raises every bucket at once.
func TestBucketFence(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, testredis.URL(t), testredis.Prefix(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.CreateRollout(ctx, store.Rollout{ID: "r-1"}); err != nil {
		t.Fatal(err)
	}
	a, err := s.AcquireLease(ctx, store.RolloutLease, "ferryd-a", 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutExecutions(ctx, "r-1", a, []store.Execution{{DeviceID: "d1", Status: "PENDING"}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	b, err := s.AcquireLease(ctx, store.RolloutLease, "ferryd-b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// a's bucket writes, as they would run after a passed the lease check:
	// refused in d1's bucket and in one nobody of the rollout wrote to.
	for _, id := range []string{"d1", "d9"} {
		bk := bucketOf(id)
		call := scriptCall{putExecutionsScript, []string{s.executionsKey(bk, "r-1"), s.bucketFenceKey(bk, store.RolloutLease)},
			[]any{a, id, `{"device_id":"` + id + `","status":"FAILED"}`}}
		out, err := call.script.Run(ctx, s.rdb, call.keys, call.args...).Text()
		if err != nil || out != "fenced" {
			t.Errorf("bucket write of %s with the old token = %q, %v; want fenced", id, out, err)
		}
	}
	execs, err := s.ListExecutions(ctx, "r-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(execs) != 1 || execs[0].Status != "PENDING" {
		t.Errorf("executions after the fenced writes: %+v", execs)
	}
	if err := s.PutExecutions(ctx, "r-1", a, []store.Execution{{DeviceID: "d1"}}); !errors.Is(err, store.ErrFenced) {
		t.Errorf("PutExecutions with the old token = %v, want ErrFenced", err)
	}
	if err := s.PutExecutions(ctx, "r-1", b, []store.Execution{{DeviceID: "d9", Status: "PENDING"}}); err != nil {
		t.Errorf("PutExecutions with the new token: %v", err)
	}
}
