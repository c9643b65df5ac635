package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ferryhq/ferry/store"
)

// testSecretSwap: SwapSecret is a compare-and-set of a secret: it needs the
// value it replaces, a repeat of a swap that happened succeeds without a
// change, and of concurrent swaps from one value exactly one wins.
func testSecretSwap(t *testing.T, s store.Credentials) {
	ctx := context.Background()
	if err := s.SwapSecret(ctx, "keys", []byte("v0"), []byte("v1")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("swap of a missing secret = %v, want ErrNotFound", err)
	}
	if _, err := s.GetOrCreateSecret(ctx, "keys", []byte("v0")); err != nil {
		t.Fatal(err)
	}
	get := func() []byte {
		t.Helper()
		// The candidate is never stored: the secret exists.
		v, err := s.GetOrCreateSecret(ctx, "keys", []byte("unused"))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if err := s.SwapSecret(ctx, "keys", []byte("v0"), []byte("v1")); err != nil {
		t.Fatalf("swap v0 -> v1: %v", err)
	}
	if err := s.SwapSecret(ctx, "keys", []byte("v0"), []byte("v1")); err != nil {
		t.Errorf("repeated swap v0 -> v1 = %v, want success (a retry)", err)
	}
	if err := s.SwapSecret(ctx, "keys", []byte("v0"), []byte("v2")); !errors.Is(err, store.ErrConflict) {
		t.Errorf("swap from a stale value = %v, want ErrConflict", err)
	}
	if got := get(); !bytes.Equal(got, []byte("v1")) {
		t.Errorf("secret = %q after the swaps, want v1", got)
	}
	// Binary values with every byte survive.
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	if err := s.SwapSecret(ctx, "keys", []byte("v1"), all); err != nil {
		t.Fatalf("swap to binary: %v", err)
	}
	if got := get(); !bytes.Equal(got, all) {
		t.Errorf("binary secret came back as %x", got)
	}

	// Concurrent swaps from the same value: one wins, the rest conflict.
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = s.SwapSecret(ctx, "keys", all, fmt.Appendf(nil, "winner-%d", i)) })
	}
	wg.Wait()
	won := -1
	for i, err := range errs {
		switch {
		case err == nil && won >= 0:
			t.Errorf("swaps %d and %d both won", won, i)
		case err == nil:
			won = i
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("swap %d: %v, want ErrConflict", i, err)
		}
	}
	if won < 0 {
		t.Fatal("no concurrent swap won")
	}
	if got, want := get(), fmt.Appendf(nil, "winner-%d", won); !bytes.Equal(got, want) {
		t.Errorf("secret = %q, want the winner's %q", got, want)
	}
	// Other names are untouched.
	if other, err := s.GetOrCreateSecret(ctx, "other", []byte("x")); err != nil || !bytes.Equal(other, []byte("x")) {
		t.Errorf("other secret = %q, %v", other, err)
	}
}
