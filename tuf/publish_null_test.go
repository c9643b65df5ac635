package tuf_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/ferryhq/ferry/tuf"
)

// TestPublishNullEntries: metadata with a JSON null where an object belongs
// (which makes go-tuf's decoders dereference nil) is refused as invalid,
// before any signature is checked, and nothing panics.
func TestPublishNullEntries(t *testing.T) {
	e := newEnv(t, 2)
	call := func(name string, f func() error) {
		t.Run(name, func(t *testing.T) {
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("PANIC: %v", r)
					}
				}()
				err = f()
			}()
			if k := tuf.KindOf(err); k != tuf.KindInvalid {
				t.Fatalf("got %v, want an invalid-argument error", err)
			}
		})
	}
	ctx := context.Background()
	call("targets null target", func() error {
		_, err := e.repo.PublishTargets(ctx, []tuf.SignedMetadata{{Role: "targets", Data: []byte(
			`{"signatures":[],"signed":{"_type":"targets","spec_version":"1.0.31","version":9,"expires":"2099-01-01T00:00:00Z","targets":{"a/x.bin":null}}}`)}})
		return err
	})
	call("root null role", func() error {
		_, err := e.repo.PublishRoot(ctx, []byte(
			`{"signatures":[],"signed":{"_type":"root","spec_version":"1.0.31","version":2,"expires":"2099-01-01T00:00:00Z","consistent_snapshot":true,"keys":{},"roles":{"root":null,"targets":null,"snapshot":null,"timestamp":null}}}`))
		return err
	})
	call("root null key", func() error {
		_, err := e.repo.PublishRoot(ctx, []byte(
			`{"signatures":[],"signed":{"_type":"root","spec_version":"1.0.31","version":2,"expires":"2099-01-01T00:00:00Z","consistent_snapshot":true,"keys":{"k1":null},"roles":{"root":{"keyids":["k1"],"threshold":1},"targets":{"keyids":["k1"],"threshold":1},"snapshot":{"keyids":["k1"],"threshold":1},"timestamp":{"keyids":["k1"],"threshold":1}}}}`))
		return err
	})
}
