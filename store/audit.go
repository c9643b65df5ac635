package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"
	"time"
)

// AuditChains is how many hash chains the audit trail is spread over. An
// entry's chain is chosen from its actor (AuditChain), so one actor's
// entries stay in order on one chain, and on Redis the chains are spread
// over the cluster's slots instead of making one hot slot.
const AuditChains = 16

// AuditEntry is one record of the audit trail: who did what, when, from
// where, and how it ended. Entries are append-only and hash-chained: each
// holds the hash of the entry before it on its chain.
type AuditEntry struct {
	// Chain and Seq place the entry: Seq numbers the entries of a chain
	// from 1; the store assigns both.
	Chain int       `json:"chain"`
	Seq   uint64    `json:"seq"`
	Time  time.Time `json:"time"`
	// Actor is who acted: "operator:<name>" or "device:<id>"; Role the
	// operator's role ("" for devices).
	Actor string `json:"actor"`
	Role  string `json:"role,omitempty"`
	// Action is the procedure called ("/ferry.fleet.v1.FleetService/AddDevice").
	Action string `json:"action"`
	// Resource is the device, rollout or key the action was about, when
	// one can be named.
	Resource string `json:"resource,omitempty"`
	// Args is the request as JSON, secrets redacted.
	Args json.RawMessage `json:"args,omitempty"`
	// Peer is the caller's network address.
	Peer string `json:"peer,omitempty"`
	// Result is the status code the call ended with ("ok", "permission_denied").
	Result string `json:"result"`
	// Error is the error message of a failed call.
	Error string `json:"error,omitempty"`
	// Prev is the hex SHA-256 of the chain's previous entry ("" for the
	// first); Hash is this entry's (AuditHash).
	Prev string `json:"prev"`
	Hash string `json:"hash"`
}

// AuditHash returns the hex SHA-256 that chains e: of the domain string
// "ferry-audit-v1\n" followed by e's JSON with Hash empty.
func AuditHash(e AuditEntry) string {
	e.Hash = ""
	e.Time = e.Time.UTC()
	b, err := json.Marshal(e)
	if err != nil { // RawMessage that is not JSON: hash its bytes as they are
		e.Args = json.RawMessage(strconv.Quote(string(e.Args)))
		b, _ = json.Marshal(e)
	}
	h := sha256.New()
	h.Write([]byte("ferry-audit-v1\n"))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// AuditChain returns the chain of an actor's entries: a stable FNV-1a hash
// of the actor, modulo AuditChains.
func AuditChain(actor string) int {
	h := fnv.New32a()
	h.Write([]byte(actor))
	return int(h.Sum32() % AuditChains)
}

// Seal fills e's chain link: it follows prev (the chain's head; a zero
// entry when the chain is empty) and gets its hash.
func (e *AuditEntry) Seal(prev AuditEntry) {
	e.Seq = prev.Seq + 1
	e.Prev = prev.Hash
	e.Time = e.Time.UTC()
	e.Hash = AuditHash(*e)
}

// AuditQuery selects audit entries. Zero fields match every entry.
type AuditQuery struct {
	// Since (inclusive) and Until (exclusive) bound the entries' time.
	Since, Until time.Time
	Actor        string
	// Action matches entries whose action ends with it ("AddDevice"
	// matches "/ferry.fleet.v1.FleetService/AddDevice").
	Action   string
	Resource string
	Result   string
}

// Match reports whether e satisfies q.
func (q AuditQuery) Match(e AuditEntry) bool {
	return (q.Since.IsZero() || !e.Time.Before(q.Since)) &&
		(q.Until.IsZero() || e.Time.Before(q.Until)) &&
		(q.Actor == "" || q.Actor == e.Actor) &&
		(q.Action == "" || strings.HasSuffix(e.Action, q.Action)) &&
		(q.Resource == "" || q.Resource == e.Resource) &&
		(q.Result == "" || q.Result == e.Result)
}

// AuditPage is a page of entries, newest first, and the token of the next
// page ("" at the end).
type AuditPage struct {
	Entries []AuditEntry
	Next    string
}

// ErrBadPageToken: a page token that no listing returned.
var ErrBadPageToken = errors.New("invalid page token")

// Audit is the audit trail's store.
type Audit interface {
	// AppendAudit appends e (Chain, Seq, Prev and Hash are assigned) to
	// the chain of its actor and returns it as stored.
	AppendAudit(ctx context.Context, e AuditEntry) (AuditEntry, error)
	// ListAudit returns up to limit entries matching q, newest first,
	// from the page token (a previous page's Next; "" for the first).
	ListAudit(ctx context.Context, q AuditQuery, pageToken string, limit int) (AuditPage, error)
	// AuditSpan returns, in chain order, the entries of chain with time in
	// [since, until), and the entry just before the first of them (the
	// anchor: a zero entry when there is none, or it was pruned).
	AuditSpan(ctx context.Context, chain int, since, until time.Time) (anchor AuditEntry, entries []AuditEntry, err error)
	// PruneAudit removes entries older than before and returns how many.
	PruneAudit(ctx context.Context, before time.Time) (int, error)
}

// auditCursor is a position in the newest-first order: time, then chain,
// then sequence, all descending.
type auditCursor struct {
	t     int64
	chain int
	seq   uint64
}

func (c auditCursor) String() string {
	return fmt.Sprintf("%d.%d.%d", c.t, c.chain, c.seq)
}

func parseAuditCursor(s string) (auditCursor, error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return auditCursor{}, ErrBadPageToken
	}
	t, err1 := strconv.ParseInt(parts[0], 10, 64)
	c, err2 := strconv.Atoi(parts[1])
	n, err3 := strconv.ParseUint(parts[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return auditCursor{}, ErrBadPageToken
	}
	return auditCursor{t, c, n}, nil
}

func cursorOf(e AuditEntry) auditCursor { return auditCursor{e.Time.UnixNano(), e.Chain, e.Seq} }

// after reports whether a comes after b in newest-first order.
func (a auditCursor) after(b auditCursor) bool {
	if a.t != b.t {
		return a.t < b.t
	}
	if a.chain != b.chain {
		return a.chain < b.chain
	}
	return a.seq < b.seq
}

// AuditPageBound returns the upper time bound a page token puts on a
// listing (zero for the first page), for backends that narrow their scan.
func AuditPageBound(pageToken string) (time.Time, error) {
	if pageToken == "" {
		return time.Time{}, nil
	}
	c, err := parseAuditCursor(pageToken)
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(0, c.t+1), nil
}

// PageAudit filters candidates with q, sorts them newest first and cuts
// the page after pageToken: the common end of backends' ListAudit.
func PageAudit(candidates []AuditEntry, q AuditQuery, pageToken string, limit int) (AuditPage, error) {
	if limit <= 0 {
		return AuditPage{}, fmt.Errorf("page size must be positive, got %d", limit)
	}
	var from *auditCursor
	if pageToken != "" {
		c, err := parseAuditCursor(pageToken)
		if err != nil {
			return AuditPage{}, err
		}
		from = &c
	}
	var out []AuditEntry
	for _, e := range candidates {
		if q.Match(e) && (from == nil || cursorOf(e).after(*from)) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return cursorOf(out[j]).after(cursorOf(out[i])) })
	page := AuditPage{Entries: out}
	if len(out) > limit {
		page.Entries = out[:limit]
		page.Next = cursorOf(out[limit-1]).String()
	}
	return page, nil
}

// SpanOf cuts a chain's entries (in chain order) to the span from the
// first entry with time in [since, until) to the last one (entries between
// them stay, whatever their time, so the span has no gap), and returns the
// entry before the span when it is there (its anchor; a zero entry if the
// span starts the chain or the anchor was pruned).
func SpanOf(chain []AuditEntry, since, until time.Time) (anchor AuditEntry, span []AuditEntry) {
	in := func(e AuditEntry) bool {
		return !e.Time.Before(since) && (until.IsZero() || e.Time.Before(until))
	}
	first, last := -1, -1
	for i, e := range chain {
		if in(e) {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 {
		return AuditEntry{}, nil
	}
	if first > 0 && chain[first-1].Seq+1 == chain[first].Seq {
		anchor = chain[first-1]
	}
	return anchor, chain[first : last+1]
}

// AuditPageFilter returns whether an entry can be on the page after
// pageToken (it comes after the token's position, newest first), for
// backends that count candidates as they scan.
func AuditPageFilter(pageToken string) (func(AuditEntry) bool, error) {
	if pageToken == "" {
		return func(AuditEntry) bool { return true }, nil
	}
	c, err := parseAuditCursor(pageToken)
	if err != nil {
		return nil, err
	}
	return func(e AuditEntry) bool { return cursorOf(e).after(c) }, nil
}
