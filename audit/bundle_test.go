package audit_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/ferryhq/ferry/audit"
	"github.com/ferryhq/ferry/internal/testclock"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/store/bolt"
)

func newSigner(t *testing.T) (signature.Signer, crypto.PublicKey) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := signature.LoadSigner(k, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	return s, k.Public()
}

// exported returns a bundle of the middle of a trail: 3 actors, 30 entries
// an hour apart, exported from hour 5 to hour 25.
func exported(t *testing.T) ([]byte, crypto.PublicKey, time.Time) {
	t.Helper()
	s, err := bolt.Open(filepath.Join(t.TempDir(), "ferry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	start := testclock.Start()
	clock := start
	rec := audit.NewRecorder(s, func() time.Time { return clock }, slog.Default())
	actors := []string{"operator:alice", "operator:bob", "device:gw-1"}
	for i := range 30 {
		clock = start.Add(time.Duration(i) * time.Hour)
		rec.Record(context.Background(), store.AuditEntry{Actor: actors[i%3], Action: "/ferry.fleet.v1.FleetService/SetDesiredState",
			Resource: "gw-1", Args: audit.Redact([]byte(`{"device_id":"gw-1","token":"s3cret"}`)), Result: "ok"})
	}
	signer, pub := newSigner(t)
	raw, err := audit.Export(context.Background(), audit.Sources{Audit: s, Devices: s}, signer, start.Add(5*time.Hour), start.Add(25*time.Hour), clock)
	if err != nil {
		t.Fatal(err)
	}
	return raw, pub, start
}

func TestExportVerifies(t *testing.T) {
	raw, pub, _ := exported(t)
	rep, err := audit.Verify(raw, pub)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Entries != 20 || rep.Chains == 0 || rep.KeyFromBundle {
		t.Fatalf("report %+v, want 20 entries on the given key", rep)
	}
	if strings.Contains(string(raw), "s3cret") {
		t.Fatal("a token reached the bundle")
	}
	var b audit.Bundle
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	for _, ch := range b.Content.Chains {
		if ch.Anchor == nil {
			t.Fatalf("chain %d has no anchor, though the span starts after its first entries", ch.Chain)
		}
	}
	// Without --key, the bundle's own key.
	if rep, err := audit.Verify(raw, nil); err != nil || !rep.KeyFromBundle {
		t.Fatalf("verify with the bundle's key: %+v, %v", rep, err)
	}
	// Another key is refused.
	_, other := newSigner(t)
	if _, err := audit.Verify(raw, other); !errors.Is(err, audit.ErrInvalid) || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("verify with another key: %v", err)
	}
}

func TestTamperedBundlesAreRefused(t *testing.T) {
	raw, pub, _ := exported(t)
	tests := []struct {
		name   string
		tamper func(c *audit.Chain)
		want   string
	}{
		{"removed", func(c *audit.Chain) { c.Entries = append(c.Entries[:2], c.Entries[3:]...) }, "entries %d to %d are missing after entry %d"},
		{"reordered", func(c *audit.Chain) { c.Entries[1], c.Entries[2] = c.Entries[2], c.Entries[1] }, "entry %d comes after entry %d: entries were reordered"},
		{"edited", func(c *audit.Chain) { c.Entries[2].Result = "ok-but-not" }, "entry %d was edited"},
		{"edited and rehashed", func(c *audit.Chain) {
			c.Entries[2].Actor = "operator:mallory"
			c.Entries[2].Hash = store.AuditHash(c.Entries[2])
		}, "entry %d does not link to entry %d"},
		{"edited anchor", func(c *audit.Chain) { c.Anchor.Resource = "gw-2" }, "anchor entry %d was edited"},
		{"last entry dropped", func(c *audit.Chain) { c.Entries = c.Entries[:len(c.Entries)-1] }, "changed after export"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b audit.Bundle
			if err := json.Unmarshal(raw, &b); err != nil {
				t.Fatal(err)
			}
			ch := &b.Content.Chains[0]
			e := ch.Entries
			var want string
			switch tt.name {
			case "removed":
				want = fmtf(tt.want, e[3].Seq-1, e[3].Seq-1, e[1].Seq)
			case "reordered":
				want = fmtf(tt.want, e[1].Seq, e[2].Seq)
			case "edited":
				want = fmtf(tt.want, e[2].Seq)
			case "edited and rehashed":
				want = fmtf(tt.want, e[3].Seq, e[2].Seq)
			case "edited anchor":
				want = fmtf(tt.want, ch.Anchor.Seq)
			default:
				want = tt.want
			}
			tt.tamper(ch)
			bad, err := json.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			_, err = audit.Verify(bad, pub)
			if !errors.Is(err, audit.ErrInvalid) {
				t.Fatalf("tampered bundle: %v, want ErrInvalid", err)
			}
			where := fmtf("chain %d:", ch.Chain)
			if tt.name == "last entry dropped" {
				where = ""
			}
			if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), where) {
				t.Fatalf("error %q does not say %q at %q", err, want, where)
			}
		})
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"device_id":"gw-1","enrollment_token":"abc"}`, `{"device_id":"gw-1","enrollment_token":"[redacted]"}`},
		{`{"nested":{"password":"x","public_key":"pk"}}`, `{"nested":{"password":"[redacted]","public_key":"pk"}}`},
		{`{"keys":[{"privateKey":"x","keyId":"k1"}]}`, `{"keys":[{"keyId":"k1","privateKey":"[redacted]"}]}`},
		{`{"apiKey":"x","csr":"c"}`, `{"apiKey":"[redacted]","csr":"c"}`},
		{`not json`, `null`},
	}
	for _, tt := range tests {
		if got := string(audit.Redact([]byte(tt.in))); got != tt.want {
			t.Errorf("Redact(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
