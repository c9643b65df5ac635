package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/ferryhq/ferry/store"
)

// auditBucket holds one nested bucket per chain ("00".."15"), each keyed by
// big-endian sequence number with the entry's JSON as value. bbolt writes
// are serialized, so a chain's head is read and the entry written in one
// transaction; the chains are those of store.AuditChain, as on Redis, so
// export and verification have one code path.
var auditBucket = []byte("audit")

var _ store.Audit = (*Store)(nil)

func chainName(c int) []byte { return fmt.Appendf(nil, "%02d", c) }

func (s *Store) auditChain(tx *bbolt.Tx, c int) (*bbolt.Bucket, error) {
	root, err := tx.CreateBucketIfNotExists(auditBucket)
	if err != nil {
		return nil, err
	}
	return root.CreateBucketIfNotExists(chainName(c))
}

// AppendAudit implements store.Audit.
func (s *Store) AppendAudit(ctx context.Context, e store.AuditEntry) (store.AuditEntry, error) {
	e.Chain = store.AuditChain(e.Actor)
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := s.auditChain(tx, e.Chain)
		if err != nil {
			return err
		}
		var head store.AuditEntry
		if _, v := b.Cursor().Last(); v != nil {
			if err := json.Unmarshal(v, &head); err != nil {
				return fmt.Errorf("audit chain %d head: %w", e.Chain, err)
			}
		}
		e.Seal(head)
		raw, err := json.Marshal(e)
		if err != nil {
			return err
		}
		return b.Put(binary.BigEndian.AppendUint64(nil, e.Seq), raw)
	})
	if err != nil {
		return store.AuditEntry{}, fmt.Errorf("append audit entry: %w", err)
	}
	return e, nil
}

// scanAudit calls fn with every entry of chain c in order.
func scanAudit(tx *bbolt.Tx, c int, fn func(store.AuditEntry) error) error {
	root := tx.Bucket(auditBucket)
	if root == nil {
		return nil
	}
	b := root.Bucket(chainName(c))
	if b == nil {
		return nil
	}
	return b.ForEach(func(_, v []byte) error {
		var e store.AuditEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("audit chain %d: %w", c, err)
		}
		return fn(e)
	})
}

// ListAudit implements store.Audit.
func (s *Store) ListAudit(ctx context.Context, q store.AuditQuery, pageToken string, limit int) (store.AuditPage, error) {
	var all []store.AuditEntry
	err := s.db.View(func(tx *bbolt.Tx) error {
		for c := range store.AuditChains {
			if err := scanAudit(tx, c, func(e store.AuditEntry) error {
				if q.Match(e) {
					all = append(all, e)
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return store.AuditPage{}, err
	}
	return store.PageAudit(all, q, pageToken, limit)
}

// AuditSpan implements store.Audit.
func (s *Store) AuditSpan(ctx context.Context, chain int, since, until time.Time) (anchor store.AuditEntry, entries []store.AuditEntry, err error) {
	if chain < 0 || chain >= store.AuditChains {
		return anchor, nil, fmt.Errorf("audit chain %d does not exist", chain)
	}
	var all []store.AuditEntry
	err = s.db.View(func(tx *bbolt.Tx) error {
		return scanAudit(tx, chain, func(e store.AuditEntry) error {
			all = append(all, e)
			return nil
		})
	})
	if err != nil {
		return anchor, nil, err
	}
	anchor, entries = store.SpanOf(all, since, until)
	return anchor, entries, nil
}

// PruneAudit implements store.Audit.
func (s *Store) PruneAudit(ctx context.Context, before time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bbolt.Tx) error {
		root := tx.Bucket(auditBucket)
		if root == nil {
			return nil
		}
		for c := range store.AuditChains {
			b := root.Bucket(chainName(c))
			if b == nil {
				continue
			}
			var old [][]byte
			cur := b.Cursor()
			lastKey, _ := cur.Last()
			for k, v := cur.First(); k != nil; k, v = cur.Next() {
				var e store.AuditEntry
				if err := json.Unmarshal(v, &e); err != nil {
					return err
				}
				// Keep the chain's head, so the next entry links to it.
				if !e.Time.Before(before) || string(k) == string(lastKey) {
					break
				}
				old = append(old, k)
			}
			for _, k := range old {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			n += len(old)
		}
		return nil
	})
	return n, err
}
