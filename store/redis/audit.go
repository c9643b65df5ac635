package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ferryhq/ferry/store"
)

// The audit trail is spread over store.AuditChains hash chains, each under
// its own hash tag "{aNN}" so a cluster spreads them over its slots (no
// hot slot). A chain has three keys: head ("<seq>:<hash>" of its newest
// entry), log (hash: sequence number -> entry JSON) and time (sorted set:
// sequence numbers scored by the entry's time in microseconds). An entry's
// chain is chosen from its actor (store.AuditChain).
func (s *Store) auditTag(c int) string     { return fmt.Sprintf("%s{a%02d}:audit:", s.prefix, c) }
func (s *Store) auditHeadKey(c int) string { return s.auditTag(c) + "head" }
func (s *Store) auditLogKey(c int) string  { return s.auditTag(c) + "log" }
func (s *Store) auditTimeKey(c int) string { return s.auditTag(c) + "time" }
func auditScore(t time.Time) float64       { return float64(t.UnixMicro()) }
func auditScoreArg(t time.Time) string     { return strconv.FormatInt(t.UnixMicro(), 10) }
func auditHead(e store.AuditEntry) string  { return fmt.Sprintf("%d:%s", e.Seq, e.Hash) }

var _ store.Audit = (*Store)(nil)

// appendAuditScript appends an entry sealed on the head the caller read:
// it writes only if the head is still that one (else "conflict", and the
// caller reads the new head and seals again), so a chain never forks when
// several instances append to it at once.
var appendAuditScript = goredis.NewScript(`
local head = redis.call('GET', KEYS[1]) or ''
if head ~= ARGV[1] then return {'conflict'} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
return {'ok'}`)

// AppendAudit implements store.Audit.
func (s *Store) AppendAudit(ctx context.Context, e store.AuditEntry) (store.AuditEntry, error) {
	e.Chain = store.AuditChain(e.Actor)
	c := e.Chain
	for attempt := 0; attempt < 50; attempt++ {
		raw, err := s.rdb.Get(ctx, s.auditHeadKey(c)).Result()
		if err != nil && !errors.Is(err, goredis.Nil) {
			return store.AuditEntry{}, fmt.Errorf("audit chain %d head: %w", c, err)
		}
		var head store.AuditEntry
		if raw != "" {
			seq, hash, ok := strings.Cut(raw, ":")
			n, perr := strconv.ParseUint(seq, 10, 64)
			if !ok || perr != nil {
				return store.AuditEntry{}, fmt.Errorf("audit chain %d: bad head %q", c, raw)
			}
			head = store.AuditEntry{Seq: n, Hash: hash}
		}
		e.Seal(head)
		doc, err := json.Marshal(e)
		if err != nil {
			return store.AuditEntry{}, err
		}
		reply, err := s.runOne(ctx, scriptCall{appendAuditScript,
			[]string{s.auditHeadKey(c), s.auditLogKey(c), s.auditTimeKey(c)},
			[]any{raw, auditHead(e), e.Seq, string(doc), auditScoreArg(e.Time)}})
		if err != nil {
			return store.AuditEntry{}, fmt.Errorf("append audit entry: %w", err)
		}
		if len(reply) > 0 && reply[0] == "ok" {
			return e, nil
		}
	}
	return store.AuditEntry{}, fmt.Errorf("append audit entry: chain %d: %w", c, store.ErrConflict)
}

// chainRange returns the entries of chain c with time in [since, until]
// (zero: open), in chain order.
func (s *Store) chainRange(ctx context.Context, c int, since, until time.Time) ([]string, error) {
	minS, maxS := "-inf", "+inf"
	if !since.IsZero() {
		minS = auditScoreArg(since)
	}
	if !until.IsZero() {
		maxS = auditScoreArg(until)
	}
	return s.rdb.ZRangeByScore(ctx, s.auditTimeKey(c), &goredis.ZRangeBy{Min: minS, Max: maxS}).Result()
}

func (s *Store) loadAudit(ctx context.Context, c int, seqs []string) ([]store.AuditEntry, error) {
	if len(seqs) == 0 {
		return nil, nil
	}
	vals, err := s.rdb.HMGet(ctx, s.auditLogKey(c), seqs...).Result()
	if err != nil {
		return nil, err
	}
	out := make([]store.AuditEntry, 0, len(vals))
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue // pruned meanwhile
		}
		var e store.AuditEntry
		if err := json.Unmarshal([]byte(str), &e); err != nil {
			return nil, fmt.Errorf("audit chain %d: %w", c, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// ListAudit implements store.Audit. Each chain is read newest first, in
// batches, from the query's upper time bound (narrowed by the page token)
// down, until it has given limit+1 matching entries or reaches the lower
// bound: the page is within the union of these, which store.PageAudit
// merges and cuts.
func (s *Store) ListAudit(ctx context.Context, q store.AuditQuery, pageToken string, limit int) (store.AuditPage, error) {
	if limit <= 0 {
		return store.AuditPage{}, fmt.Errorf("page size must be positive, got %d", limit)
	}
	bound, err := store.AuditPageBound(pageToken)
	if err != nil {
		return store.AuditPage{}, err
	}
	onPage, err := store.AuditPageFilter(pageToken)
	if err != nil {
		return store.AuditPage{}, err
	}
	until := q.Until
	if !bound.IsZero() && (until.IsZero() || bound.Before(until)) {
		until = bound
	}
	minS, maxS := "-inf", "+inf"
	if !q.Since.IsZero() {
		minS = auditScoreArg(q.Since)
	}
	if !until.IsZero() {
		maxS = auditScoreArg(until)
	}
	batch := int64(max(2*limit, 100))
	var all []store.AuditEntry
	for c := range store.AuditChains {
		found := 0
		for offset := int64(0); found <= limit; offset += batch {
			seqs, err := s.rdb.ZRevRangeByScore(ctx, s.auditTimeKey(c), &goredis.ZRangeBy{Min: minS, Max: maxS, Offset: offset, Count: batch}).Result()
			if err != nil {
				return store.AuditPage{}, fmt.Errorf("list audit: %w", err)
			}
			es, err := s.loadAudit(ctx, c, seqs)
			if err != nil {
				return store.AuditPage{}, fmt.Errorf("list audit: %w", err)
			}
			for _, e := range es {
				if q.Match(e) && onPage(e) {
					all = append(all, e)
					found++
				}
			}
			if int64(len(seqs)) < batch {
				break
			}
		}
	}
	return store.PageAudit(all, q, pageToken, limit)
}

// AuditSpan implements store.Audit.
func (s *Store) AuditSpan(ctx context.Context, chain int, since, until time.Time) (store.AuditEntry, []store.AuditEntry, error) {
	if chain < 0 || chain >= store.AuditChains {
		return store.AuditEntry{}, nil, fmt.Errorf("audit chain %d does not exist", chain)
	}
	seqs, err := s.chainRange(ctx, chain, since, until)
	if err != nil {
		return store.AuditEntry{}, nil, err
	}
	if len(seqs) == 0 {
		return store.AuditEntry{}, nil, nil
	}
	lo, hi := uint64(math.MaxUint64), uint64(0)
	for _, v := range seqs {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return store.AuditEntry{}, nil, fmt.Errorf("audit chain %d: bad sequence %q", chain, v)
		}
		lo, hi = min(lo, n), max(hi, n)
	}
	var want []string
	for n := max(lo, 2) - 1; n <= hi; n++ {
		want = append(want, strconv.FormatUint(n, 10))
	}
	es, err := s.loadAudit(ctx, chain, want)
	if err != nil {
		return store.AuditEntry{}, nil, err
	}
	anchor, span := store.SpanOf(es, since, until)
	return anchor, span, nil
}

// PruneAudit implements store.Audit. A chain's head stays, so that the
// next entry links to it.
func (s *Store) PruneAudit(ctx context.Context, before time.Time) (int, error) {
	n := 0
	for c := range store.AuditChains {
		seqs, err := s.rdb.ZRangeByScore(ctx, s.auditTimeKey(c), &goredis.ZRangeBy{Min: "-inf", Max: "(" + auditScoreArg(before)}).Result()
		if err != nil {
			return n, fmt.Errorf("prune audit: %w", err)
		}
		head, err := s.rdb.Get(ctx, s.auditHeadKey(c)).Result()
		if err != nil && !errors.Is(err, goredis.Nil) {
			return n, fmt.Errorf("prune audit: %w", err)
		}
		headSeq, _, _ := strings.Cut(head, ":")
		old := seqs[:0]
		for _, v := range seqs {
			if v != headSeq {
				old = append(old, v)
			}
		}
		if len(old) == 0 {
			continue
		}
		members := make([]any, len(old))
		for i, v := range old {
			members[i] = v
		}
		if err := s.rdb.HDel(ctx, s.auditLogKey(c), old...).Err(); err != nil {
			return n, fmt.Errorf("prune audit: %w", err)
		}
		if err := s.rdb.ZRem(ctx, s.auditTimeKey(c), members...).Err(); err != nil {
			return n, fmt.Errorf("prune audit: %w", err)
		}
		n += len(old)
	}
	return n, nil
}
