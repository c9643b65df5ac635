package tuf

import (
	"context"
	"crypto/sha256"
	"fmt"
	"maps"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// This file signs ferryd's online roles: snapshot and timestamp, on each
// publish and before they expire.

// commit signs a new snapshot (when newSnapshot, or when there is none)
// and a new timestamp over cur with updates applied, stores them (the
// timestamp last: it is what makes the new version current), and returns
// the new view. The caller holds the write lock (lockWrite).
func (r *Repository) commit(ctx context.Context, cur *state, updates map[string]*metadata.Metadata[metadata.TargetsType], newSnapshot bool) (*state, error) {
	now := r.cfg.Now().UTC()
	n := *cur
	next := &n
	if len(updates) > 0 {
		next.roles = maps.Clone(cur.roles)
		next.index = &targetIndex{}
		maps.Copy(next.roles, updates)
	}
	if newSnapshot || cur.snapshot == nil {
		snap := metadata.Snapshot(expiry(now, r.cfg.SnapshotExpiry))
		snap.Signed.Meta = map[string]*metadata.MetaFiles{}
		if cur.snapshot != nil {
			maps.Copy(snap.Signed.Meta, cur.snapshot.Signed.Meta)
			snap.Signed.Version = cur.snapshot.Signed.Version + 1
		}
		for role, md := range updates {
			snap.Signed.Meta[role+".json"] = &metadata.MetaFiles{Version: md.Signed.Version}
		}
		if _, err := snap.Sign(r.cfg.Keys.Snapshot); err != nil {
			return nil, fmt.Errorf("sign snapshot: %w", err)
		}
		raw, err := snap.ToBytes(false)
		if err != nil {
			return nil, err
		}
		if err := r.cfg.Storage.WriteAll(ctx, metadataKey(fmtRole(metadata.SNAPSHOT, snap.Signed.Version)), raw); err != nil {
			return nil, fmt.Errorf("store snapshot: %w", err)
		}
		next.snapshot = snap
		next.timestamp = nil // must follow the new snapshot
		sum := sha256.Sum256(raw)
		ts := metadata.Timestamp(expiry(now, r.cfg.TimestampExpiry))
		ts.Signed.Meta["snapshot.json"] = &metadata.MetaFiles{
			Version: snap.Signed.Version, Length: int64(len(raw)), Hashes: metadata.Hashes{"sha256": sum[:]},
		}
		if cur.timestamp != nil {
			ts.Signed.Version = cur.timestamp.Signed.Version + 1
		}
		next.timestamp = ts
	} else {
		ts := metadata.Timestamp(expiry(now, r.cfg.TimestampExpiry))
		ts.Signed.Meta = cur.timestamp.Signed.Meta
		ts.Signed.Version = cur.timestamp.Signed.Version + 1
		next.timestamp = ts
	}
	if _, err := next.timestamp.Sign(r.cfg.Keys.Timestamp); err != nil {
		return nil, fmt.Errorf("sign timestamp: %w", err)
	}
	raw, err := next.timestamp.ToBytes(false)
	if err != nil {
		return nil, err
	}
	if err := r.cfg.Storage.WriteAll(ctx, metadataKey("timestamp.json"), raw); err != nil {
		return nil, fmt.Errorf("store timestamp: %w", err)
	}
	next.timestampRaw = raw
	return next, nil
}

func expiry(now time.Time, d time.Duration) time.Time { return now.Add(d).Truncate(time.Second) }

// RefreshExpiring re-signs what is past half its lifetime: a new snapshot
// (and timestamp) when the snapshot is, else a new timestamp when the
// timestamp is. It reports whether it signed anything.
func (r *Repository) RefreshExpiring(ctx context.Context) (bool, error) {
	unlock, err := r.lockWrite(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	cur, err := r.sync(ctx)
	if err != nil {
		return false, err
	}
	if cur.snapshot == nil {
		return false, nil
	}
	now := r.cfg.Now()
	snapDue := cur.snapshot.Signed.Expires.Sub(now) < r.cfg.SnapshotExpiry/2
	tsDue := cur.timestamp.Signed.Expires.Sub(now) < r.cfg.TimestampExpiry/2
	if !snapDue && !tsDue {
		return false, nil
	}
	next, err := r.commit(ctx, cur, nil, snapDue)
	if err != nil {
		return false, err
	}
	r.committed(ctx, next)
	r.cfg.Logger.InfoContext(ctx, "re-signed before expiry", "snapshot", next.snapshot.Signed.Version, "timestamp", next.timestamp.Signed.Version)
	return true, nil
}

// Run calls RefreshExpiring every interval until ctx ends.
func (r *Repository) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := r.RefreshExpiring(ctx); err != nil && ctx.Err() == nil {
			r.cfg.Logger.ErrorContext(ctx, "re-sign snapshot and timestamp", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
