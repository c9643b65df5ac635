// Package audit is Ferry's audit trail above the store: recording entries
// with secrets redacted, exporting a span of the hash chains as a signed
// bundle, and verifying such a bundle offline.
//
// Entries live in the store's hash chains (store.Audit); an export holds,
// for every chain, the entries of the span and the entry just before it
// (the anchor), the device attestations of the jobs that ended in the span,
// and a DSSE envelope, signed by ferryd's audit key, over the SHA-256 of
// all of it. Verify checks the signature, the digest and every link, and
// says which chain and sequence number a removed, reordered or edited entry
// broke.
package audit

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"time"

	"github.com/ferryhq/ferry/store"
)

// Recorder appends entries to the trail. A failed append is logged (the
// action it records has happened already) and does not fail the caller.
type Recorder struct {
	store store.Audit
	now   func() time.Time
	log   *slog.Logger
}

// NewRecorder returns a Recorder on s; now is its clock (time.Now if nil)
// and log where failures go (slog.Default if nil).
func NewRecorder(s store.Audit, now func() time.Time, log *slog.Logger) *Recorder {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.Default()
	}
	return &Recorder{store: s, now: now, log: log}
}

// Record stamps e with the time and appends it.
func (r *Recorder) Record(ctx context.Context, e store.AuditEntry) {
	if r == nil {
		return
	}
	e.Time = r.now()
	if _, err := r.store.AppendAudit(context.WithoutCancel(ctx), e); err != nil {
		r.log.Error("audit entry not recorded", "actor", e.Actor, "action", e.Action, "result", e.Result, "err", err)
	}
}

// Prune removes entries older than retention, counted back from now.
func (r *Recorder) Prune(ctx context.Context, retention time.Duration) (int, error) {
	return r.store.PruneAudit(ctx, r.now().Add(-retention))
}

// Redacted is what replaces a secret in recorded arguments.
const Redacted = "[redacted]"

// maxString is the longest string value kept in recorded arguments; longer
// ones (blob contents, certificates) are cut and say how long they were.
const maxString = 512

// secretField reports whether a JSON field name holds a secret: tokens,
// passwords, private keys, API keys and the like. Public keys, key ids and
// certificate requests are kept.
func secretField(name string) bool {
	n := strings.ToLower(strings.ReplaceAll(name, "_", ""))
	for _, keep := range []string{"publickey", "keyid", "keyids", "csr"} {
		if n == keep {
			return false
		}
	}
	for _, s := range []string{"token", "password", "passphrase", "secret", "privatekey", "apikey", "credential"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return n == "key" || strings.HasSuffix(n, "key") && !strings.HasSuffix(n, "publickey")
}

// Redact returns the JSON document raw with the values of secret fields
// replaced by Redacted and long strings cut. Something that is not JSON is
// recorded as null.
func Redact(raw []byte) json.RawMessage {
	if len(raw) == 0 {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return json.RawMessage("null")
	}
	out, err := json.Marshal(redact(v))
	if err != nil {
		return json.RawMessage("null")
	}
	return out
}

func redact(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if secretField(k) {
				t[k] = Redacted
			} else {
				t[k] = redact(x)
			}
		}
		return t
	case []any:
		for i, x := range t {
			t[i] = redact(x)
		}
		return t
	case string:
		if len(t) > maxString {
			return t[:maxString] + "…(" + itoa(len(t)) + " bytes)"
		}
	}
	return v
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
